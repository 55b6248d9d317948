//! The executor: a loop, in `shoal serve` (or in a command that runs a job in the foreground),
//! that starts runnable tasks under the limits, keeps its tasks' leases alive, records how each
//! attempt ended, and takes over the tasks of daemons that are gone.
//!
//! Everything it knows is in the catalog: a daemon that dies mid-task leaves the task `running`
//! with its id as owner. Its life lock (an advisory lock held on its catalog session) vanishes
//! with it, and its heartbeat stops; either is enough for any other executor (or the same one
//! restarted) to put the task back to `runnable`. The next attempt settles the interrupted
//! transfer from its catalog row and cleanup records before doing anything else.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::error::JobError;
use crate::retry::RetryPolicy;
use crate::run::run_task;
use crate::schedule::Limits;
use crate::state::TaskState;
use crate::store::{
    self, abandoned_tasks, claim_tasks, finish_task, heartbeat, hold_daemon_lock, register_daemon,
    take_over, Abandoned, DaemonKind, Outcome,
};
use shoal_catalog::{check_version, ConnectParams};
use shoal_cluster::Cluster;
use shoal_rebalance::TaskOp;
use shoal_transfer::{recover, CancelToken, Settled};

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub kind: DaemonKind,
    /// The daemon's limits; a job may override them for its own tasks.
    pub limits: Limits,
    pub retry: RetryPolicy,
    /// A task whose heartbeat is older than this is taken over even if its daemon's session
    /// still holds its life lock (a daemon that hangs).
    pub lease: Duration,
    /// How often the daemon and its tasks say they are alive.
    pub heartbeat: Duration,
    /// How often it looks for work when nothing happens.
    pub poll: Duration,
    /// Run only this job's tasks (a command running a job in the foreground).
    pub only_job: Option<i64>,
}

/// A task's heartbeat older than this (30 s) is a hung daemon's.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl ExecutorConfig {
    pub fn new(kind: DaemonKind) -> Self {
        ExecutorConfig {
            kind,
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            lease: DEFAULT_LEASE,
            heartbeat: Duration::from_secs(2),
            poll: Duration::from_millis(200),
            only_job: None,
        }
    }
}

struct Running {
    cancel: CancelToken,
    job_id: i64,
}

/// Runs the executor until `shutdown` resolves. On shutdown the tasks it runs are stopped (a
/// move past its cutover finishes first) and put back to `runnable` for the next daemon.
pub async fn run_executor(
    params: ConnectParams,
    config: ExecutorConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut executor = Executor {
        params,
        config,
        client: None,
        daemon_id: None,
        running: HashMap::new(),
        runs: JoinSet::new(),
        run_ids: HashMap::new(),
        finished: Vec::new(),
        last_heartbeat: None,
    };
    tokio::pin!(shutdown);
    loop {
        if let Err(error) = executor.tick().await {
            tracing::warn!(%error, "executor: pass failed; reconnecting");
            executor.client = None;
            // Not in a tight loop against a coordinator that keeps failing.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            Some(joined) = executor.runs.join_next(), if !executor.runs.is_empty() => {
                executor.collect(joined);
            }
            _ = tokio::time::sleep(executor.config.poll) => {}
        }
    }
    executor.stop().await;
}

struct Executor {
    params: ConnectParams,
    config: ExecutorConfig,
    client: Option<Client>,
    daemon_id: Option<i32>,
    running: HashMap<i64, Running>,
    runs: JoinSet<(i64, Outcome)>,
    /// Which task each run is, to record a run that panicked.
    run_ids: HashMap<tokio::task::Id, i64>,
    /// Outcomes not recorded yet (the catalog was unreachable).
    finished: Vec<(i64, Outcome)>,
    last_heartbeat: Option<Instant>,
}

impl Executor {
    fn collect(&mut self, joined: Result<(i64, Outcome), tokio::task::JoinError>) {
        match joined {
            Ok((task_id, outcome)) => {
                if let Some(run) = self.running.get(&task_id) {
                    tracing::info!(task_id, job_id = run.job_id, ?outcome, "task attempt ended");
                }
                self.run_ids.retain(|_, id| *id != task_id);
                self.finished.push((task_id, outcome));
            }
            Err(error) => {
                tracing::error!(%error, "a task run panicked");
                if let Some(task_id) = self.run_ids.remove(&error.id()) {
                    self.finished.push((
                        task_id,
                        Outcome::Failed(format!("the run stopped unexpectedly: {error}")),
                    ));
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<&mut Client, JobError> {
        if self.client.is_none() {
            let label = match self.daemon_id {
                Some(id) => format!("shoal executor daemon={id}"),
                None => "shoal executor".to_string(),
            };
            let client = shoal_catalog::connect(&self.params, &label).await?;
            check_version(&client).await?;
            match self.daemon_id {
                None => {
                    let id = register_daemon(&client, self.config.kind).await?;
                    tracing::info!(daemon_id = id, "executor registered");
                    self.daemon_id = Some(id);
                }
                Some(id) => {
                    if !hold_daemon_lock(&client, id).await? {
                        tracing::warn!(daemon_id = id, "could not take the daemon lock again");
                    }
                }
            }
            self.client = Some(client);
            self.last_heartbeat = None;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    async fn tick(&mut self) -> Result<(), JobError> {
        self.connect().await?;
        let daemon_id = self.daemon_id.expect("registered on connect");
        self.record_finished(daemon_id).await?;
        let due = self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= self.config.heartbeat);
        if due {
            self.last_heartbeat = Some(Instant::now());
            let client = self.client.as_ref().expect("connected");
            let ours: Vec<i64> = self.running.keys().copied().collect();
            let owned = heartbeat(client, daemon_id, &ours).await?;
            for (task_id, run) in &self.running {
                match owned.get(task_id) {
                    Some(TaskState::Running) => {}
                    Some(TaskState::Cancelling) => run.cancel.cancel(),
                    _ => {
                        tracing::warn!(
                            task_id,
                            "task taken over by another daemon; stopping it here"
                        );
                        run.cancel.cancel();
                    }
                }
            }
            self.take_over_abandoned().await?;
        }
        self.start_tasks(daemon_id).await
    }

    async fn record_finished(&mut self, daemon_id: i32) -> Result<(), JobError> {
        while let Some((task_id, outcome)) = self.finished.first().cloned() {
            let client = self.client.as_mut().expect("connected");
            let state =
                finish_task(client, task_id, daemon_id, &outcome, &self.config.retry).await?;
            if let Some(state) = state {
                tracing::info!(task_id, %state, "task recorded");
            }
            self.finished.remove(0);
            self.running.remove(&task_id);
        }
        Ok(())
    }

    async fn take_over_abandoned(&mut self) -> Result<(), JobError> {
        let client = self.client.as_mut().expect("connected");
        let abandoned = abandoned_tasks(client, self.config.lease).await?;
        for task in abandoned {
            if task.owner == self.daemon_id && self.running.contains_key(&task.task_id) {
                continue;
            }
            let (settled, message) = self.settle_abandoned(&task).await;
            let client = self.client.as_mut().expect("connected");
            if take_over(client, &task, settled, &message).await? {
                tracing::warn!(
                    task_id = task.task_id,
                    owner = task.owner,
                    "took over a task whose daemon is gone"
                );
            }
        }
        Ok(())
    }

    /// What an abandoned task becomes. A running one is simply run again. A cancelling one is
    /// settled here: its interrupted transfer is rolled back, or finished if it had switched.
    async fn settle_abandoned(&self, task: &Abandoned) -> (TaskState, String) {
        let gone = match task.owner {
            Some(owner) => format!("daemon {owner}, which ran it, is gone"),
            None => "it had no daemon".to_string(),
        };
        if task.state != TaskState::Cancelling {
            return (
                TaskState::Runnable,
                format!("{gone}; it will run again from where the catalog says it is"),
            );
        }
        let shard = match &task.operation {
            TaskOp::Move(mv) => Some(mv.anchor_shard_id),
            _ => None,
        };
        let Some(shard) = shard else {
            return (TaskState::Cancelled, format!("{gone}; cancelled"));
        };
        let settled =
            match Cluster::connect_labelled(self.params.clone(), "shoal executor recovery").await {
                Ok(cluster) => recover(&cluster, shard).await,
                Err(error) => Err(error.into()),
            };
        match settled {
            Ok(Settled::Completed { operation_id }) => (
                TaskState::Done,
                format!(
                    "{gone}; its move (operation {operation_id}) had switched and was completed"
                ),
            ),
            Ok(_) => (TaskState::Cancelled, format!("{gone}; cancelled")),
            Err(error) => (
                TaskState::Cancelled,
                format!("{gone}; cancelled ({error}; the cleanup loop finishes the removal)"),
            ),
        }
    }

    async fn start_tasks(&mut self, daemon_id: i32) -> Result<(), JobError> {
        let client = self.client.as_mut().expect("connected");
        let claimed =
            claim_tasks(client, daemon_id, self.config.limits, self.config.only_job).await?;
        for store::Claimed { task, options } in claimed {
            let task_id = task.task_id;
            let cancel = CancelToken::default();
            tracing::info!(task_id = task.task_id, job_id = task.job_id, description = %task.description, "starting task");
            self.running.insert(
                task.task_id,
                Running {
                    cancel: cancel.clone(),
                    job_id: task.job_id,
                },
            );
            let params = self.params.clone();
            let mode = options.transfer_mode();
            let handle = self.runs.spawn(async move {
                let outcome = run_task(
                    params,
                    task.job_id,
                    task.task_id,
                    task.operation,
                    mode,
                    cancel,
                )
                .await;
                (task.task_id, outcome)
            });
            self.run_ids.insert(handle.id(), task_id);
        }
        Ok(())
    }

    /// Stops every run (they clean up after themselves), records how they ended, and
    /// unregisters. Tasks interrupted here become runnable for the next daemon.
    async fn stop(mut self) {
        for run in self.running.values() {
            run.cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !self.runs.is_empty() {
            match tokio::time::timeout_at(deadline, self.runs.join_next()).await {
                Ok(Some(joined)) => self.collect(joined),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("tasks did not stop within 120 s; leaving them to the lease");
                    break;
                }
            }
        }
        let Some(daemon_id) = self.daemon_id else {
            return;
        };
        for attempt in 0..3 {
            let recorded = async {
                self.connect().await?;
                self.record_finished(daemon_id).await?;
                store::daemon_stopped(self.client.as_ref().expect("connected"), daemon_id).await
            }
            .await;
            match recorded {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, attempt, "executor: could not record its end");
                    self.client = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
