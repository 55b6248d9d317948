//! Jobs, tasks and daemons in the catalog: typed rows and every change of state.
//!
//! Every change of a task's state happens in a transaction that first locks its job's row, so
//! the job's state, derived from its tasks' ([`job_state`]), is computed from what that
//! transaction sees and written with it. Changes by a daemon to a task it runs are guarded by
//! `owner = <its id>`: a daemon that lost a task (taken over after its lease ran out) changes
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient, Row, Transaction};

use crate::error::JobError;
use crate::progress::{job_progress, JobProgress, TaskProgress};
use crate::retry::{AfterFailure, RetryPolicy};
use crate::schedule::Limits;
use crate::state::{job_state, JobState, TaskState};
use shoal_rebalance::{TaskOp, TaskSpec};
use shoal_transfer::Mode;

type Result<T> = std::result::Result<T, JobError>;

/// First key of the advisory lock a daemon holds for its whole life (second key: its id).
pub const DAEMON_LOCK_CLASS: i32 = 0x5348_4f44;
/// Serialises the schedulers of every daemon, so limits hold across daemons.
const SCHEDULER_LOCK_KEY: i64 = 0x5348_4f41_4c00_0002;

/// How a rebalance-like job was asked for; stored with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOptions {
    #[serde(default)]
    pub strategy: Option<String>,
    /// `auto`, `force_logical` or `block_writes`.
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub parallel_colocated: bool,
    #[serde(default)]
    pub parallel_reference: bool,
    #[serde(default)]
    pub drain_only: bool,
    /// The node a drain empties.
    #[serde(default)]
    pub drain_node: Option<i32>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub improvement_threshold: Option<f64>,
    #[serde(default)]
    pub max_moves: Option<usize>,
    /// Overrides the daemon's limits for this job's tasks.
    #[serde(default)]
    pub max_parallel: Option<usize>,
    #[serde(default)]
    pub max_parallel_per_node: Option<usize>,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

fn default_mode() -> String {
    "auto".to_string()
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            strategy: None,
            mode: default_mode(),
            parallel_colocated: false,
            parallel_reference: false,
            drain_only: false,
            drain_node: None,
            threshold: None,
            improvement_threshold: None,
            max_moves: None,
            max_parallel: None,
            max_parallel_per_node: None,
            max_retries: None,
        }
    }
}

impl JobOptions {
    pub fn limits(&self, defaults: Limits) -> Limits {
        Limits {
            max_parallel: self.max_parallel.unwrap_or(defaults.max_parallel).max(1),
            max_parallel_per_node: self
                .max_parallel_per_node
                .unwrap_or(defaults.max_parallel_per_node)
                .max(1),
        }
    }

    pub fn retry(&self, defaults: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            delays: defaults.delays.clone(),
            max_retries: self.max_retries.unwrap_or(defaults.max_retries),
        }
    }

    pub fn transfer_mode(&self) -> Mode {
        parse_mode(&self.mode).unwrap_or(Mode::Auto)
    }
}

pub fn parse_mode(text: &str) -> Option<Mode> {
    [Mode::Auto, Mode::ForceLogical, Mode::BlockWrites]
        .into_iter()
        .find(|m| m.as_str() == text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Rebalance,
    Drain,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Rebalance => "rebalance",
            JobKind::Drain => "drain",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub job_id: i64,
    pub kind: String,
    pub description: String,
    pub state: JobState,
    pub options: JobOptions,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Since it started, until it finished (or now).
    pub elapsed_seconds: Option<f64>,
}

const TIME: &str = "'YYYY-MM-DD HH24:MI:SSOF'";

fn job_select() -> String {
    format!(
        "SELECT j.job_id, j.kind, j.description, j.state, j.options, j.error,
                to_char(j.created_at, {TIME}), to_char(j.started_at, {TIME}),
                to_char(j.finished_at, {TIME}),
                extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at)::float8
         FROM shoal.job j"
    )
}

fn job_from_row(row: &Row) -> Result<Job> {
    let job_id: i64 = row.get(0);
    let state: String = row.get(3);
    Ok(Job {
        job_id,
        kind: row.get(1),
        description: row.get(2),
        state: JobState::parse(&state).ok_or_else(|| JobError::BadCatalog {
            what: format!("job {job_id}"),
            reason: format!("unknown state {state}"),
        })?,
        options: serde_json::from_value(row.get(4)).map_err(|e| JobError::BadCatalog {
            what: format!("the options of job {job_id}"),
            reason: e.to_string(),
        })?,
        error: row.get(5),
        created_at: row.get(6),
        started_at: row.get(7),
        finished_at: row.get(8),
        elapsed_seconds: row.get(9),
    })
}

/// The transfer a task's latest attempt runs (or ran).
#[derive(Debug, Clone, Serialize)]
pub struct TransferProgress {
    pub operation_id: i64,
    pub status: String,
    pub bytes_done: Option<i64>,
    pub bytes_total: Option<i64>,
    pub finished: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub task_id: i64,
    pub job_id: i64,
    pub position: i32,
    pub state: TaskState,
    pub operation: TaskOp,
    pub description: String,
    pub nodes: Vec<i32>,
    pub bytes_total: i64,
    pub retry_count: i32,
    pub not_before: Option<String>,
    pub message: Option<String>,
    pub owner: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub depends_on: Vec<i64>,
    pub transfer: Option<TransferProgress>,
}

impl Task {
    pub fn progress(&self) -> TaskProgress {
        TaskProgress {
            state: self.state,
            bytes_total: self.bytes_total,
            // A finished transfer of a task not yet recorded done counts as all or nothing.
            transfer: self
                .transfer
                .as_ref()
                .map(|t| match (t.finished, t.status.as_str()) {
                    (true, "Completed") => (1, 1),
                    (true, _) => (0, 1),
                    (false, _) => (t.bytes_done.unwrap_or(0), t.bytes_total.unwrap_or(0)),
                }),
        }
    }
}

fn task_select() -> String {
    format!(
        "SELECT k.task_id, k.job_id, k.position, k.state, k.operation, k.description, k.nodes,
                k.bytes_total, k.retry_count, to_char(k.not_before, {TIME}), k.message, k.owner,
                k.operation_id, to_char(k.started_at, {TIME}), to_char(k.finished_at, {TIME}),
                coalesce((SELECT array_agg(d.depends_on ORDER BY d.depends_on)
                          FROM shoal.task_dependency d WHERE d.task_id = k.task_id), '{{}}'),
                t.status, t.bytes_done, t.bytes_total, t.finished_at IS NOT NULL
         FROM shoal.task k LEFT JOIN shoal.transfer t ON t.operation_id = k.operation_id"
    )
}

fn task_from_row(row: &Row) -> Result<Task> {
    let task_id: i64 = row.get(0);
    let state: String = row.get(3);
    let operation_id: Option<i64> = row.get(12);
    let status: Option<String> = row.get(16);
    Ok(Task {
        task_id,
        job_id: row.get(1),
        position: row.get(2),
        state: TaskState::parse(&state).ok_or_else(|| JobError::BadCatalog {
            what: format!("task {task_id}"),
            reason: format!("unknown state {state}"),
        })?,
        operation: serde_json::from_value(row.get(4)).map_err(|e| JobError::BadCatalog {
            what: format!("the operation of task {task_id}"),
            reason: e.to_string(),
        })?,
        description: row.get(5),
        nodes: row.get(6),
        bytes_total: row.get(7),
        retry_count: row.get(8),
        not_before: row.get(9),
        message: row.get(10),
        owner: row.get(11),
        started_at: row.get(13),
        finished_at: row.get(14),
        depends_on: row.get(15),
        transfer: match (operation_id, status) {
            (Some(operation_id), Some(status)) => Some(TransferProgress {
                operation_id,
                status,
                bytes_done: row.get(17),
                bytes_total: row.get(18),
                finished: row.get(19),
            }),
            _ => None,
        },
    })
}

/// A task of a job to create: what the task graph says, with a description and a size.
pub struct NewTask<'a> {
    pub spec: &'a TaskSpec,
    pub description: String,
    pub bytes_total: i64,
}

/// Creates a job and its tasks (runnable when they depend on nothing, blocked otherwise) in one
/// transaction. Refused while another rebalance or drain is unfinished.
pub async fn create_job(
    client: &mut Client,
    kind: JobKind,
    description: &str,
    options: &JobOptions,
    plan: &serde_json::Value,
    tasks: &[NewTask<'_>],
) -> Result<i64> {
    let tx = client.transaction().await?;
    let options_json = serde_json::to_value(options).map_err(|e| JobError::BadCatalog {
        what: "the job's options".into(),
        reason: e.to_string(),
    })?;
    tx.batch_execute("SAVEPOINT shoal_job").await?;
    let inserted = tx
        .query_one(
            "INSERT INTO shoal.job (kind, description, options, plan) VALUES ($1, $2, $3, $4)
             RETURNING job_id",
            &[&kind.as_str(), &description, &options_json, plan],
        )
        .await;
    let job_id: i64 = match inserted {
        Ok(row) => row.get(0),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT shoal_job").await?;
            let row = tx
                .query_one(
                    "SELECT job_id, kind, state FROM shoal.job
                     WHERE kind IN ('rebalance', 'drain') AND finished_at IS NULL",
                    &[],
                )
                .await?;
            return Err(JobError::AlreadyRunning {
                job_id: row.get(0),
                kind: row.get(1),
                state: row.get(2),
            });
        }
        Err(error) => return Err(error.into()),
    };
    let mut ids: BTreeMap<usize, i64> = BTreeMap::new();
    for task in tasks {
        let operation = serde_json::to_value(&task.spec.op).map_err(|e| JobError::BadCatalog {
            what: "a task's operation".into(),
            reason: e.to_string(),
        })?;
        let state = if task.spec.depends_on.is_empty() {
            TaskState::Runnable
        } else {
            TaskState::Blocked
        };
        let task_id: i64 = tx
            .query_one(
                "INSERT INTO shoal.task
                     (job_id, position, state, operation, description, nodes, bytes_total)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING task_id",
                &[
                    &job_id,
                    &(task.spec.key as i32),
                    &state.as_str(),
                    &operation,
                    &task.description,
                    &task.spec.nodes_involved,
                    &task.bytes_total,
                ],
            )
            .await?
            .get(0);
        ids.insert(task.spec.key, task_id);
        for dependency in &task.spec.depends_on {
            let depends_on = ids.get(dependency).ok_or_else(|| JobError::BadCatalog {
                what: format!("task {} of the new job", task.spec.key),
                reason: format!("it depends on task {dependency}, which does not come before it"),
            })?;
            tx.execute(
                "INSERT INTO shoal.task_dependency (task_id, depends_on) VALUES ($1, $2)",
                &[&task_id, depends_on],
            )
            .await?;
        }
    }
    refresh_job(&tx, job_id).await?;
    tx.commit().await?;
    Ok(job_id)
}

pub async fn get_job(client: &impl GenericClient, job_id: i64) -> Result<Job> {
    let row = client
        .query_opt(&format!("{} WHERE j.job_id = $1", job_select()), &[&job_id])
        .await?
        .ok_or(JobError::UnknownJob(job_id))?;
    job_from_row(&row)
}

/// The most recent jobs, newest first.
pub async fn list_jobs(client: &impl GenericClient, limit: i64) -> Result<Vec<Job>> {
    client
        .query(
            &format!("{} ORDER BY j.job_id DESC LIMIT $1", job_select()),
            &[&limit],
        )
        .await?
        .iter()
        .map(job_from_row)
        .collect()
}

/// The unfinished rebalance or drain, or else the latest one.
pub async fn current_rebalance_job(client: &impl GenericClient) -> Result<Option<Job>> {
    let row = client
        .query_opt(
            &format!(
                "{} WHERE j.kind IN ('rebalance', 'drain')
                 ORDER BY j.finished_at IS NULL DESC, j.job_id DESC LIMIT 1",
                job_select()
            ),
            &[],
        )
        .await?;
    row.as_ref().map(job_from_row).transpose()
}

pub async fn tasks_of_job(client: &impl GenericClient, job_id: i64) -> Result<Vec<Task>> {
    client
        .query(
            &format!("{} WHERE k.job_id = $1 ORDER BY k.position", task_select()),
            &[&job_id],
        )
        .await?
        .iter()
        .map(task_from_row)
        .collect()
}

/// A job with its tasks and its progress.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    #[serde(flatten)]
    pub job: Job,
    pub progress: JobProgress,
    pub tasks: Vec<Task>,
}

pub async fn job_status(client: &impl GenericClient, job_id: i64) -> Result<JobStatus> {
    let job = get_job(client, job_id).await?;
    let tasks = tasks_of_job(client, job_id).await?;
    let progress: Vec<TaskProgress> = tasks.iter().map(Task::progress).collect();
    let elapsed = job
        .elapsed_seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64);
    let progress = job_progress(&progress, elapsed.filter(|_| !job.state.is_final()));
    Ok(JobStatus {
        job,
        progress,
        tasks,
    })
}

/// Recomputes a job's state from its tasks' and writes it, with its start and end times and
/// the error of its first failed task. Call it in the transaction that changed the tasks, after
/// locking the job's row.
pub async fn refresh_job(client: &impl GenericClient, job_id: i64) -> Result<JobState> {
    let rows = client
        .query("SELECT state FROM shoal.task WHERE job_id = $1", &[&job_id])
        .await?;
    let states: Vec<TaskState> = rows
        .iter()
        .filter_map(|r| TaskState::parse(r.get(0)))
        .collect();
    let started: bool = client
        .query_one(
            "SELECT started_at IS NOT NULL FROM shoal.job WHERE job_id = $1",
            &[&job_id],
        )
        .await?
        .get(0);
    let state = job_state(states.iter().copied(), started);
    client
        .execute(
            "UPDATE shoal.job SET state = $2,
                    started_at = CASE WHEN $2 = 'scheduled' THEN started_at
                                      ELSE coalesce(started_at, now()) END,
                    finished_at = CASE WHEN $3 THEN coalesce(finished_at, now()) END,
                    error = coalesce(error, (
                        SELECT format('task %s (%s): %s', k.task_id, k.description, k.message)
                        FROM shoal.task k WHERE k.job_id = $1 AND k.state = 'error'
                        ORDER BY k.finished_at, k.task_id LIMIT 1))
             WHERE job_id = $1",
            &[&job_id, &state.as_str(), &state.is_final()],
        )
        .await?;
    Ok(state)
}

/// Locks a job's row for the rest of the transaction; every change of its tasks' states does
/// this first, so the job's state is derived from a consistent set of task states.
async fn lock_job(tx: &Transaction<'_>, job_id: i64) -> Result<JobState> {
    let row = tx
        .query_opt(
            "SELECT state FROM shoal.job WHERE job_id = $1 FOR UPDATE",
            &[&job_id],
        )
        .await?
        .ok_or(JobError::UnknownJob(job_id))?;
    let state: String = row.get(0);
    JobState::parse(&state).ok_or_else(|| JobError::BadCatalog {
        what: format!("job {job_id}"),
        reason: format!("unknown state {state}"),
    })
}

/// Cancels a job: tasks that have not started are cancelled, running ones are asked to stop
/// (their transfers too) and become cancelled once they have. Returns the job's new state.
pub async fn cancel_job(client: &mut Client, job_id: i64) -> Result<JobState> {
    let tx = client.transaction().await?;
    let state = lock_job(&tx, job_id).await?;
    if state.is_final() {
        tx.commit().await?;
        return Ok(state);
    }
    tx.execute(
        "UPDATE shoal.task SET state = 'cancelled', finished_at = now(), not_before = NULL,
                message = coalesce(message || '; ', '') || 'cancelled before it started'
         WHERE job_id = $1 AND state IN ('blocked', 'runnable')",
        &[&job_id],
    )
    .await?;
    tx.execute(
        "UPDATE shoal.task SET state = 'cancelling' WHERE job_id = $1 AND state = 'running'",
        &[&job_id],
    )
    .await?;
    tx.execute(
        "UPDATE shoal.transfer SET cancel_requested = true
         WHERE finished_at IS NULL AND operation_id IN (
             SELECT operation_id FROM shoal.task WHERE job_id = $1 AND state = 'cancelling')",
        &[&job_id],
    )
    .await?;
    let state = refresh_job(&tx, job_id).await?;
    tx.commit().await?;
    Ok(state)
}

/// How one attempt of a task ended, as its runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The task did what it had to (now, or earlier: a move already on its target).
    Done(String),
    /// Something else holds what the task needs (a shard group moved by another process):
    /// try again soon, without counting a failed attempt.
    Busy(String),
    /// The attempt failed; retried according to the policy.
    Failed(String),
    /// The run was stopped here (job cancelled, daemon stopping, task taken over); what it
    /// built was removed.
    Interrupted(String),
}

/// How soon a busy task is tried again.
pub const BUSY_RETRY: Duration = Duration::from_secs(2);

/// Records how a task's attempt ended, if `owner` still owns the task, and updates its
/// dependants and its job. Returns the task's new state, or `None` if the task was not ours.
pub async fn finish_task(
    client: &mut Client,
    task_id: i64,
    owner: i32,
    outcome: &Outcome,
    default_retry: &RetryPolicy,
) -> Result<Option<TaskState>> {
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT job_id FROM shoal.task WHERE task_id = $1",
            &[&task_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let job_id: i64 = row.get(0);
    lock_job(&tx, job_id).await?;
    let Some(row) = tx
        .query_opt(
            "SELECT k.state, k.retry_count, j.options FROM shoal.task k JOIN shoal.job j USING (job_id)
             WHERE k.task_id = $1 AND k.owner = $2 AND k.state IN ('running', 'cancelling')
             FOR UPDATE OF k",
            &[&task_id, &owner],
        )
        .await?
    else {
        tx.commit().await?;
        return Ok(None);
    };
    let current = TaskState::parse(row.get(0)).unwrap_or(TaskState::Running);
    let retries: i32 = row.get(1);
    let options: JobOptions = serde_json::from_value(row.get(2)).unwrap_or_default();
    let cancelling = current == TaskState::Cancelling;
    let (state, message, delay) = match outcome {
        Outcome::Done(message) => (TaskState::Done, message.clone(), None),
        Outcome::Busy(message) | Outcome::Failed(message) | Outcome::Interrupted(message)
            if cancelling =>
        {
            (TaskState::Cancelled, message.clone(), None)
        }
        Outcome::Busy(message) => (TaskState::Runnable, message.clone(), Some(BUSY_RETRY)),
        Outcome::Interrupted(message) => (TaskState::Runnable, message.clone(), None),
        Outcome::Failed(message) => {
            match options
                .retry(default_retry)
                .after_failure(retries.max(0) as u32)
            {
                AfterFailure::RetryIn(delay) => (TaskState::Runnable, message.clone(), Some(delay)),
                AfterFailure::GiveUp => (TaskState::Error, message.clone(), None),
            }
        }
    };
    let counts_as_retry = matches!(outcome, Outcome::Failed(_)) && state == TaskState::Runnable;
    tx.execute(
        "UPDATE shoal.task SET state = $2, message = $3, owner = NULL, heartbeat_at = NULL,
                retry_count = retry_count + CASE WHEN $4 THEN 1 ELSE 0 END,
                not_before = CASE WHEN $5::float8 IS NULL THEN NULL
                                  ELSE now() + make_interval(secs => $5::float8) END,
                finished_at = CASE WHEN $6 THEN now() END
         WHERE task_id = $1",
        &[
            &task_id,
            &state.as_str(),
            &message,
            &counts_as_retry,
            &delay.map(|d| d.as_secs_f64()),
            &state.is_final(),
        ],
    )
    .await?;
    match state {
        TaskState::Done => unblock_dependants(&tx, job_id).await?,
        TaskState::Error => unschedule_dependants(&tx, task_id).await?,
        _ => {}
    }
    refresh_job(&tx, job_id).await?;
    tx.commit().await?;
    Ok(Some(state))
}

/// Blocked tasks whose dependencies are all done become runnable.
async fn unblock_dependants(tx: &Transaction<'_>, job_id: i64) -> Result<()> {
    tx.execute(
        "UPDATE shoal.task t SET state = 'runnable'
         WHERE t.job_id = $1 AND t.state = 'blocked'
           AND NOT EXISTS (SELECT 1 FROM shoal.task_dependency d
                           JOIN shoal.task p ON p.task_id = d.depends_on
                           WHERE d.task_id = t.task_id AND p.state <> 'done')",
        &[&job_id],
    )
    .await?;
    Ok(())
}

/// Every task that depends on a failed one, directly or not, will not run.
async fn unschedule_dependants(tx: &Transaction<'_>, task_id: i64) -> Result<()> {
    tx.execute(
        "WITH RECURSIVE dependants(task_id) AS (
             SELECT task_id FROM shoal.task_dependency WHERE depends_on = $1
             UNION
             SELECT d.task_id FROM shoal.task_dependency d
             JOIN dependants x ON d.depends_on = x.task_id)
         UPDATE shoal.task SET state = 'unscheduled', finished_at = now(), not_before = NULL,
                message = format('not run: task %s, which it depends on, failed', $1::bigint)
         WHERE task_id IN (SELECT task_id FROM dependants) AND state IN ('blocked', 'runnable')",
        &[&task_id],
    )
    .await?;
    Ok(())
}

/// A task claimed by a daemon, with what its runner needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task: Task,
    pub options: JobOptions,
}

/// Picks and claims the tasks this daemon starts now: runnable tasks (past their `not_before`)
/// of jobs that accept work, chosen by [`crate::schedule::select`] against every task running
/// in any daemon, under one advisory lock shared by all schedulers so the limits hold across
/// daemons. `only_job` restricts the choice to one job.
pub async fn claim_tasks(
    client: &mut Client,
    owner: i32,
    defaults: Limits,
    only_job: Option<i64>,
) -> Result<Vec<Claimed>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEDULER_LOCK_KEY])
        .await?;
    let running: Vec<Vec<i32>> = tx
        .query(
            "SELECT nodes FROM shoal.task WHERE state IN ('running', 'cancelling')",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = tx
        .query(
            "SELECT k.task_id, k.job_id, k.nodes, j.options FROM shoal.task k
             JOIN shoal.job j USING (job_id)
             WHERE k.state = 'runnable' AND (k.not_before IS NULL OR k.not_before <= now())
               AND j.state IN ('scheduled', 'running', 'failing')
               AND ($1::bigint IS NULL OR k.job_id = $1)
             ORDER BY k.job_id, k.position",
            &[&only_job],
        )
        .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let mut options_of: BTreeMap<i64, JobOptions> = BTreeMap::new();
    let candidates: Vec<crate::schedule::Candidate> = rows
        .iter()
        .map(|r| {
            let job_id: i64 = r.get(1);
            let options: JobOptions = serde_json::from_value(r.get(3)).unwrap_or_default();
            let limits = options.limits(defaults);
            options_of.insert(job_id, options);
            crate::schedule::Candidate {
                task_id: r.get(0),
                nodes: r.get(2),
                limits,
            }
        })
        .collect();
    let picked = crate::schedule::select(&candidates, &running);
    if picked.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    // Job rows first, in id order, as every other change of task states does.
    let jobs: Vec<i64> = rows
        .iter()
        .filter(|r| picked.contains(&r.get::<_, i64>(0)))
        .map(|r| r.get::<_, i64>(1))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for job_id in &jobs {
        lock_job(&tx, *job_id).await?;
    }
    let claimed: Vec<i64> = tx
        .query(
            "UPDATE shoal.task k SET state = 'running', owner = $2, heartbeat_at = now(),
                    started_at = coalesce(k.started_at, now()), not_before = NULL
             FROM shoal.job j
             WHERE k.task_id = ANY ($1) AND k.state = 'runnable' AND j.job_id = k.job_id
               AND j.state IN ('scheduled', 'running', 'failing')
             RETURNING k.task_id",
            &[&picked, &owner],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for job_id in &jobs {
        refresh_job(&tx, *job_id).await?;
    }
    let tasks: Vec<Task> = tx
        .query(
            &format!(
                "{} WHERE k.task_id = ANY ($1) ORDER BY k.task_id",
                task_select()
            ),
            &[&claimed],
        )
        .await?
        .iter()
        .map(task_from_row)
        .collect::<Result<_>>()?;
    tx.commit().await?;
    Ok(tasks
        .into_iter()
        .map(|task| Claimed {
            options: options_of.get(&task.job_id).cloned().unwrap_or_default(),
            task,
        })
        .collect())
}

/// Records the transfer an attempt of a task runs, for progress.
pub async fn set_task_operation(
    client: &impl GenericClient,
    task_id: i64,
    operation_id: i64,
) -> Result<()> {
    client
        .execute(
            "UPDATE shoal.task SET operation_id = $2 WHERE task_id = $1",
            &[&task_id, &operation_id],
        )
        .await?;
    Ok(())
}

/// A daemon's registration: `serve`, or a command running a job in the foreground.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonKind {
    Serve,
    Foreground,
}

impl DaemonKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonKind::Serve => "serve",
            DaemonKind::Foreground => "foreground",
        }
    }
}

/// Registers a daemon and takes its life lock on `client`'s session.
pub async fn register_daemon(client: &Client, kind: DaemonKind) -> Result<i32> {
    // Forget daemons gone for a day: the table would otherwise grow with every foreground run.
    client
        .execute(
            &format!(
                "DELETE FROM shoal.daemon d
                 WHERE coalesce(d.stopped_at, d.heartbeat_at) < now() - interval '1 day'
                   AND NOT {}",
                daemon_alive_sql("d.daemon_id")
            ),
            &[],
        )
        .await?;
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    let daemon_id: i32 = client
        .query_one(
            "INSERT INTO shoal.daemon (kind, host, pid) VALUES ($1, $2, $3) RETURNING daemon_id",
            &[&kind.as_str(), &host, &(std::process::id() as i32)],
        )
        .await?
        .get(0);
    hold_daemon_lock(client, daemon_id).await?;
    Ok(daemon_id)
}

/// Takes the daemon's life lock again (after a reconnect). False if another session holds it.
pub async fn hold_daemon_lock(client: &Client, daemon_id: i32) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&DAEMON_LOCK_CLASS, &daemon_id],
        )
        .await?
        .get(0))
}

pub async fn daemon_stopped(client: &Client, daemon_id: i32) -> Result<()> {
    client
        .execute(
            "UPDATE shoal.daemon SET stopped_at = now() WHERE daemon_id = $1",
            &[&daemon_id],
        )
        .await?;
    client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&DAEMON_LOCK_CLASS, &daemon_id],
        )
        .await?;
    Ok(())
}

/// SQL: whether daemon `$owner_expr` holds its life lock (so its process is alive).
fn daemon_alive_sql(owner_expr: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND l.classid = {DAEMON_LOCK_CLASS}::oid AND l.objid = ({owner_expr})::oid)"
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct Daemon {
    pub daemon_id: i32,
    pub kind: String,
    pub host: String,
    pub pid: i32,
    pub started_at: String,
}

/// Daemons whose process is alive (life lock held) and whose heartbeat is recent.
pub async fn live_daemons(client: &impl GenericClient, lease: Duration) -> Result<Vec<Daemon>> {
    Ok(client
        .query(
            &format!(
                "SELECT d.daemon_id, d.kind, d.host, d.pid, to_char(d.started_at, {TIME})
                 FROM shoal.daemon d
                 WHERE d.stopped_at IS NULL
                   AND d.heartbeat_at > now() - make_interval(secs => $1)
                   AND {}
                 ORDER BY d.daemon_id",
                daemon_alive_sql("d.daemon_id")
            ),
            &[&lease.as_secs_f64()],
        )
        .await?
        .iter()
        .map(|r| Daemon {
            daemon_id: r.get(0),
            kind: r.get(1),
            host: r.get(2),
            pid: r.get(3),
            started_at: r.get(4),
        })
        .collect())
}

/// Refreshes the daemon's heartbeat and that of the tasks it runs (`running`: only those, so a
/// task it owns but no longer runs goes stale and is taken over); returns the state of those it
/// still owns, so it can stop the runs it lost and the ones being cancelled.
pub async fn heartbeat(
    client: &Client,
    daemon_id: i32,
    running: &[i64],
) -> Result<BTreeMap<i64, TaskState>> {
    client
        .execute(
            "UPDATE shoal.daemon SET heartbeat_at = now(), stopped_at = NULL WHERE daemon_id = $1",
            &[&daemon_id],
        )
        .await?;
    Ok(client
        .query(
            "UPDATE shoal.task SET heartbeat_at = now()
             WHERE owner = $1 AND task_id = ANY ($2) AND state IN ('running', 'cancelling')
             RETURNING task_id, state",
            &[&daemon_id, &running],
        )
        .await?
        .iter()
        .filter_map(|r| Some((r.get(0), TaskState::parse(r.get(1))?)))
        .collect())
}

/// A task whose daemon is gone.
#[derive(Debug, Clone)]
pub struct Abandoned {
    pub task_id: i64,
    pub job_id: i64,
    pub state: TaskState,
    pub owner: Option<i32>,
    pub operation: TaskOp,
}

/// Running and cancelling tasks whose owner's process is gone (its life lock is free) or whose
/// heartbeat is older than `lease`.
pub async fn abandoned_tasks(
    client: &impl GenericClient,
    lease: Duration,
) -> Result<Vec<Abandoned>> {
    client
        .query(
            &format!(
                "SELECT k.task_id, k.job_id, k.state, k.owner, k.operation FROM shoal.task k
                 WHERE k.state IN ('running', 'cancelling')
                   AND (k.owner IS NULL OR k.heartbeat_at IS NULL
                        OR k.heartbeat_at < now() - make_interval(secs => $1)
                        OR NOT {})
                 ORDER BY k.task_id",
                daemon_alive_sql("k.owner")
            ),
            &[&lease.as_secs_f64()],
        )
        .await?
        .iter()
        .map(|r| {
            let task_id: i64 = r.get(0);
            Ok(Abandoned {
                task_id,
                job_id: r.get(1),
                state: TaskState::parse(r.get(2)).unwrap_or(TaskState::Running),
                owner: r.get(3),
                operation: serde_json::from_value(r.get(4)).map_err(|e| JobError::BadCatalog {
                    what: format!("the operation of task {task_id}"),
                    reason: e.to_string(),
                })?,
            })
        })
        .collect()
}

/// Takes over an abandoned task: a running one becomes runnable again (its next attempt
/// settles what the last one left, from the catalog), a cancelling one ends in `settled`
/// (`cancelled`, or `done` when its move had already switched). False if another process took
/// it first, or its owner came back.
pub async fn take_over(
    client: &mut Client,
    task: &Abandoned,
    settled: TaskState,
    message: &str,
) -> Result<bool> {
    let tx = client.transaction().await?;
    lock_job(&tx, task.job_id).await?;
    let (state, finished) = match task.state {
        TaskState::Cancelling => (settled, true),
        _ => (TaskState::Runnable, false),
    };
    let changed = tx
        .execute(
            "UPDATE shoal.task SET state = $3, owner = NULL, heartbeat_at = NULL, message = $4,
                    finished_at = CASE WHEN $5 THEN now() END
             WHERE task_id = $1 AND owner IS NOT DISTINCT FROM $2 AND state = $6",
            &[
                &task.task_id,
                &task.owner,
                &state.as_str(),
                &message,
                &finished,
                &task.state.as_str(),
            ],
        )
        .await?;
    if changed == 1 && state == TaskState::Done {
        unblock_dependants(&tx, task.job_id).await?;
    }
    refresh_job(&tx, task.job_id).await?;
    tx.commit().await?;
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_fill_in_the_daemons_defaults() {
        let options = JobOptions {
            max_parallel_per_node: Some(3),
            max_retries: Some(0),
            ..JobOptions::default()
        };
        assert_eq!(
            options.limits(Limits {
                max_parallel: 4,
                max_parallel_per_node: 1
            }),
            Limits {
                max_parallel: 4,
                max_parallel_per_node: 3
            }
        );
        assert_eq!(options.retry(&RetryPolicy::default()).max_retries, 0);
        assert_eq!(options.transfer_mode(), Mode::Auto);
    }

    #[test]
    fn options_read_what_older_jobs_stored() {
        let options: JobOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(options, JobOptions::default());
        let options: JobOptions =
            serde_json::from_str(r#"{"mode": "block_writes", "parallel_colocated": true}"#)
                .unwrap();
        assert_eq!(options.transfer_mode(), Mode::BlockWrites);
        assert!(options.parallel_colocated);
        assert_eq!(parse_mode("force_logical"), Some(Mode::ForceLogical));
        assert_eq!(parse_mode("fast"), None);
    }
}
