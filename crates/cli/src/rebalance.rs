//! `shoal rebalance ...` and `shoal node drain`: plan, start, follow and stop the background job
//! that moves shard groups; the executor duty of `shoal serve`; progress bars.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::args::{JsonFlag, TransferMode};
use crate::output::{human_bytes, print_json, print_table};
use crate::serve::Shutdown;
use shoal_catalog::ConnectParams;
use shoal_cluster::Cluster;
use shoal_jobs::rebalance::{self, PlannedRebalance, Started};
use shoal_jobs::store::{self, live_daemons};
use shoal_jobs::{
    run_executor, DaemonKind, ExecutorConfig, JobOptions, JobState, JobStatus, Limits, RetryPolicy,
    TaskState, DEFAULT_LEASE, DEFAULT_LIMITS,
};
use shoal_rebalance::{CostKind, Strategy};

#[derive(Debug, Subcommand)]
pub enum RebalanceCommand {
    /// Print the moves a rebalance would make now (shard sizes are measured first)
    Plan(PlanArgs),
    /// Plan the moves and start them as a background job run by `shoal serve`; prints the job id
    Start(StartArgs),
    /// The current (or last) rebalance: tasks by state, bytes done and left, time left
    Status(JsonFlag),
    /// Follow the current rebalance with progress bars until it ends (runs it from here when no
    /// `shoal serve` is running)
    Wait(JsonFlag),
    /// Cancel the current rebalance: running moves stop and remove what they built, the others
    /// do not start; moves already done stay done
    Stop,
    /// List the rebalance strategies (rows of shoal.rebalance_strategy)
    Strategies(JsonFlag),
    /// Add or remove a rebalance strategy, or choose the default one
    #[command(subcommand)]
    Strategy(StrategyCommand),
}

#[derive(Debug, Subcommand)]
pub enum StrategyCommand {
    /// Add a strategy: what a shard group costs, how balanced is balanced, node capacities and
    /// where colocation groups may not go
    Add(StrategyAddArgs),
    /// Remove a strategy (not the default one)
    Remove {
        /// The strategy's name
        name: String,
    },
    /// Make a strategy the one used when `--strategy` is not given
    Default {
        /// The strategy's name
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyCost {
    /// Every shard group costs 1: nodes end with equal numbers of groups
    ShardCount,
    /// A group costs its size on disk plus a fixed base: nodes end with equal bytes
    DiskSize,
}

#[derive(Debug, Args)]
pub struct StrategyAddArgs {
    /// The strategy's name
    pub name: String,
    /// What a shard group costs
    #[arg(long, value_enum)]
    pub cost: StrategyCost,
    /// With `--cost disk-size`: the fixed cost added to every group, in bytes (empty groups
    /// still count) [default: 104857600, as by_disk_size]
    #[arg(long, value_name = "BYTES")]
    pub base_cost_bytes: Option<i64>,
    /// How far from the average a node may be and still count as balanced (0.1 = 10%)
    /// [default: as the built-in strategy of the same cost]
    #[arg(long)]
    pub threshold: Option<f64>,
    /// The lowest threshold `--threshold` may set when planning [default: as the built-in]
    #[arg(long)]
    pub minimum_threshold: Option<f64>,
    /// A move that overshoots must improve the balance by this share of what it moves
    /// [default: as the built-in]
    #[arg(long)]
    pub improvement_threshold: Option<f64>,
    /// A node's capacity relative to the others (default 1): NODE_ID=CAPACITY; repeatable
    #[arg(long, value_name = "NODE_ID=CAPACITY", value_parser = parse_capacity)]
    pub capacity: Vec<(i32, f64)>,
    /// A colocation group's shards may not be placed on a node: COLOCATION_ID:NODE_ID; repeatable
    #[arg(long, value_name = "COLOCATION_ID:NODE_ID", value_parser = parse_disallowed)]
    pub disallow: Vec<(i32, i32)>,
    /// Make it the default strategy
    #[arg(long)]
    pub default: bool,
}

fn parse_capacity(text: &str) -> Result<(i32, f64), String> {
    let (node, capacity) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NODE_ID=CAPACITY, as in 3=2.5"))?;
    let node = node
        .trim()
        .parse()
        .map_err(|_| format!("`{node}` is not a node id (see `shoal node list`)"))?;
    let capacity: f64 = capacity
        .trim()
        .parse()
        .map_err(|_| format!("`{capacity}` is not a number"))?;
    if !capacity.is_finite() || capacity <= 0.0 {
        return Err(format!("a capacity must be above 0, not {capacity}"));
    }
    Ok((node, capacity))
}

fn parse_disallowed(text: &str) -> Result<(i32, i32), String> {
    let (group, node) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not COLOCATION_ID:NODE_ID, as in 2:3"))?;
    let group = group
        .trim()
        .parse()
        .map_err(|_| format!("`{group}` is not a colocation group id (see `shoal table list`)"))?;
    let node = node
        .trim()
        .parse()
        .map_err(|_| format!("`{node}` is not a node id (see `shoal node list`)"))?;
    Ok((group, node))
}

impl StrategyAddArgs {
    /// The catalog row, thresholds not given taken from the built-in strategy of the same cost.
    fn row(&self) -> rebalance::StrategyRow {
        let builtin_name = match self.cost {
            StrategyCost::ShardCount => "by_shard_count",
            StrategyCost::DiskSize => "by_disk_size",
        };
        let builtin = Strategy::builtin(builtin_name).unwrap_or(Strategy::ByShardCount);
        let cost = match self.cost {
            StrategyCost::ShardCount => serde_json::json!({"kind": "shard_count"}),
            StrategyCost::DiskSize => {
                let base = self.base_cost_bytes.unwrap_or(match builtin.cost_kind() {
                    CostKind::DiskSize { base_cost_bytes } => base_cost_bytes,
                    CostKind::ShardCount => 0,
                });
                serde_json::json!({"kind": "disk_size", "base_cost_bytes": base})
            }
        };
        let threshold = self.threshold.unwrap_or(builtin.default_threshold());
        rebalance::StrategyRow {
            name: self.name.clone(),
            is_default: self.default,
            cost,
            capacity_overrides: serde_json::json!(self.capacity),
            disallowed: serde_json::json!(self.disallow),
            default_threshold: threshold,
            // The built-in's minimum only when it fits under the threshold given; a minimum the
            // user gives is kept as given (and refused if above the threshold).
            minimum_threshold: self
                .minimum_threshold
                .unwrap_or(builtin.minimum_threshold().min(threshold)),
            improvement_threshold: self
                .improvement_threshold
                .unwrap_or(builtin.improvement_threshold()),
        }
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Strategy (see `shoal rebalance strategies`); the default one otherwise
    #[arg(long)]
    pub strategy: Option<String>,
    /// How far from the average a node may be and still count as balanced (0.1 = 10%)
    #[arg(long)]
    pub threshold: Option<f64>,
    /// A move that overshoots must improve the balance by this share of what it moves
    #[arg(long)]
    pub improvement_threshold: Option<f64>,
    /// Only move shards off nodes that should not have them; do not balance
    #[arg(long)]
    pub drain_only: bool,
    /// Plan at most this many moves (those that empty nodes come first)
    #[arg(long, value_name = "N")]
    pub max_moves: Option<usize>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// How the job runs; shared by `rebalance start` and `node drain`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// How each shard group moves (see `shoal shard move --help`)
    #[arg(long, value_enum, default_value_t = TransferMode::Auto)]
    pub mode: TransferMode,
    /// Move different shard groups at the same time where the plan allows it
    #[arg(long)]
    pub parallel_colocated: bool,
    /// Copy missing reference tables one task per table, and create their foreign keys after
    #[arg(long)]
    pub parallel_reference: bool,
    /// Tasks of this job running at once, in all (overrides the daemon's --max-parallel)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_parallel: Option<u64>,
    /// Tasks of this job running at once on one node (overrides the daemon's setting)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_parallel_per_node: Option<u64>,
    /// Retries of a failed task before the job fails (overrides the daemon's --max-retries)
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Node id or HOST:PORT
    pub node: String,
    /// Strategy used to choose where the shard groups go
    #[arg(long)]
    pub strategy: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Start the job and return (follow it with `shoal rebalance wait`)
    #[arg(long)]
    pub no_wait: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// The executor's settings in `shoal serve`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// Background tasks (shard moves) running at once, in all
    #[arg(long, default_value_t = DEFAULT_LIMITS.max_parallel as u64,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_parallel: u64,
    /// Background tasks running at once that involve one node
    #[arg(long, default_value_t = DEFAULT_LIMITS.max_parallel_per_node as u64,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_parallel_per_node: u64,
    /// Retries of a failed task (after 5 s, 20 s, then every 60 s) before its job fails
    #[arg(long, default_value_t = shoal_jobs::retry::DEFAULT_MAX_RETRIES)]
    pub max_retries: u32,
}

impl ExecutorArgs {
    pub fn config(&self, kind: DaemonKind) -> ExecutorConfig {
        ExecutorConfig {
            limits: Limits {
                max_parallel: self.max_parallel as usize,
                max_parallel_per_node: self.max_parallel_per_node as usize,
            },
            retry: RetryPolicy::with_max_retries(self.max_retries),
            ..ExecutorConfig::new(kind)
        }
    }
}

/// The executor as a duty of `shoal serve`.
pub async fn executor_duty(params: ConnectParams, config: ExecutorConfig, mut shutdown: Shutdown) {
    run_executor(params, config, async move {
        let _ = shutdown.changed().await;
    })
    .await;
}

fn job_options(plan: &PlanArgs, run: &RunArgs) -> JobOptions {
    JobOptions {
        strategy: plan.strategy.clone(),
        mode: crate::transfer::mode(run.mode).as_str().to_string(),
        parallel_colocated: run.parallel_colocated,
        parallel_reference: run.parallel_reference,
        drain_only: plan.drain_only,
        drain_node: None,
        threshold: plan.threshold,
        improvement_threshold: plan.improvement_threshold,
        max_moves: plan.max_moves,
        max_parallel: run.max_parallel.map(|n| n as usize),
        max_parallel_per_node: run.max_parallel_per_node.map(|n| n as usize),
        max_retries: run.max_retries,
    }
}

pub async fn run(cluster: &Cluster, command: RebalanceCommand) -> anyhow::Result<()> {
    match command {
        RebalanceCommand::Plan(args) => {
            let options = job_options(
                &args,
                &RunArgs {
                    mode: TransferMode::Auto,
                    parallel_colocated: false,
                    parallel_reference: false,
                    max_parallel: None,
                    max_parallel_per_node: None,
                    max_retries: None,
                },
            );
            let planned = rebalance::plan_rebalance(cluster, &options).await?;
            if args.json {
                return print_json(&planned);
            }
            print_plan(&planned);
            Ok(())
        }
        RebalanceCommand::Start(args) => {
            let options = job_options(&args.plan, &args.run);
            let started = rebalance::start_rebalance(cluster, &options).await?;
            report_started(cluster, &started, args.plan.json, "shoal rebalance wait").await
        }
        RebalanceCommand::Status(json) => {
            let job = current_job(cluster).await?;
            let status = store::job_status(cluster.client(), job).await?;
            if json.json {
                return print_json(&status);
            }
            print_status(&status);
            Ok(())
        }
        RebalanceCommand::Wait(json) => {
            let job = current_job(cluster).await?;
            wait_for_job(cluster, job, json.json).await
        }
        RebalanceCommand::Stop => {
            let job = current_job(cluster).await?;
            stop_job(cluster, job).await
        }
        RebalanceCommand::Strategy(StrategyCommand::Add(args)) => {
            if args.base_cost_bytes.is_some() && args.cost != StrategyCost::DiskSize {
                bail!("--base-cost-bytes applies to --cost disk-size only");
            }
            let row = args.row();
            let mut client = cluster.coordinator("shoal rebalance strategy").await?;
            rebalance::add_strategy(&mut client, &row).await?;
            println!(
                "added rebalance strategy {}{}",
                row.name,
                if row.is_default {
                    " (the default now)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        RebalanceCommand::Strategy(StrategyCommand::Remove { name }) => {
            rebalance::remove_strategy(cluster.client(), &name).await?;
            println!("removed rebalance strategy {name}");
            Ok(())
        }
        RebalanceCommand::Strategy(StrategyCommand::Default { name }) => {
            let mut client = cluster.coordinator("shoal rebalance strategy").await?;
            rebalance::set_default_strategy(&mut client, &name).await?;
            println!("{name} is the default rebalance strategy now");
            Ok(())
        }
        RebalanceCommand::Strategies(json) => {
            let rows = rebalance::list_strategies(cluster.client()).await?;
            if json.json {
                return print_json(&rows);
            }
            let text: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        if r.is_default { "yes" } else { "" }.to_string(),
                        r.cost.to_string(),
                        r.default_threshold.to_string(),
                        r.minimum_threshold.to_string(),
                        r.improvement_threshold.to_string(),
                        format!("{} / {}", r.capacity_overrides, r.disallowed),
                    ]
                })
                .collect();
            print_table(
                &[
                    "strategy",
                    "default",
                    "cost",
                    "threshold",
                    "minimum",
                    "improvement",
                    "capacities / disallowed",
                ],
                &text,
            );
            Ok(())
        }
    }
}

/// `node drain`: the node gets no more shards, and a job moves every shard group off it.
pub async fn drain(cluster: &Cluster, args: DrainArgs) -> anyhow::Result<()> {
    let plan = PlanArgs {
        strategy: args.strategy.clone(),
        threshold: None,
        improvement_threshold: None,
        drain_only: true,
        max_moves: None,
        json: args.json,
    };
    let options = job_options(&plan, &args.run);
    let started = rebalance::drain_node(cluster, &args.node, &options).await?;
    if args.no_wait {
        return report_started(cluster, &started, args.json, "shoal rebalance wait").await;
    }
    let Some(job_id) = started.job_id else {
        if args.json {
            return print_json(&started);
        }
        println!("node {}: no shard group to move; it is empty", args.node);
        return Ok(());
    };
    if !args.json {
        println!(
            "job {job_id}: draining node {} ({} task(s))",
            args.node,
            started.planned.tasks.len()
        );
    }
    wait_for_job(cluster, job_id, args.json).await
}

async fn current_job(cluster: &Cluster) -> anyhow::Result<i64> {
    match store::current_rebalance_job(cluster.client()).await? {
        Some(job) => Ok(job.job_id),
        None => Err(shoal_jobs::JobError::NoRebalanceJob.into()),
    }
}

async fn report_started(
    cluster: &Cluster,
    started: &Started,
    json: bool,
    follow: &str,
) -> anyhow::Result<()> {
    let daemons = serve_daemons(cluster).await?;
    if json {
        print_json(started)?;
    } else {
        match started.job_id {
            None => println!(
                "the cluster is balanced ({}): nothing to move",
                started.planned.strategy
            ),
            Some(job_id) => {
                let moves = started.planned.plan.moves.len();
                let bytes: i64 = started.planned.tasks.iter().map(|t| t.bytes_total).sum();
                println!(
                    "started job {job_id}: {moves} move(s) and {} reference table copy(ies), {} in all ({} strategy); follow it with `{follow}`",
                    started.planned.reference_copies.len(),
                    human_bytes(Some(bytes)),
                    started.planned.strategy
                );
            }
        }
    }
    if started.job_id.is_some() && daemons == 0 {
        eprintln!(
            "warning: no `shoal serve` is running against this coordinator, so nothing runs the \
             job yet; start one, or run `{follow}`, which runs it from that terminal"
        );
    }
    Ok(())
}

async fn serve_daemons(cluster: &Cluster) -> anyhow::Result<usize> {
    Ok(live_daemons(cluster.client(), DEFAULT_LEASE)
        .await?
        .iter()
        .filter(|d| d.kind == DaemonKind::Serve.as_str())
        .count())
}

fn print_plan(planned: &PlannedRebalance) {
    let plan = &planned.plan;
    println!(
        "strategy {}, threshold {}, improvement threshold {}",
        planned.strategy, plan.threshold, plan.improvement_threshold
    );
    if planned.tasks.is_empty() {
        println!("the cluster is balanced: nothing to move");
    } else {
        let rows: Vec<Vec<String>> = planned
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.spec.key.to_string(),
                    t.description.clone(),
                    human_bytes(Some(t.bytes_total)),
                    t.spec
                        .depends_on
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        print_table(&["task", "what", "size", "after"], &rows);
    }
    println!();
    let rows: Vec<Vec<String>> = plan
        .before
        .iter()
        .zip(&plan.after)
        .map(|(before, after)| {
            vec![
                before.node_id.to_string(),
                before.groups.to_string(),
                after.groups.to_string(),
                format!("{:.3}", before.utilisation),
                format!("{:.3}", after.utilisation),
            ]
        })
        .collect();
    print_table(
        &[
            "node",
            "groups before",
            "groups after",
            "load before",
            "load after",
        ],
        &rows,
    );
}

fn seconds(value: f64) -> String {
    if value >= 120.0 {
        format!("{:.0} min", value / 60.0)
    } else {
        format!("{value:.1} s")
    }
}

pub fn print_status(status: &JobStatus) {
    let job = &status.job;
    let elapsed = match (job.elapsed_seconds, job.state.is_final()) {
        (Some(s), true) => format!(" after {}", seconds(s)),
        (Some(s), false) => format!(" for {}", seconds(s)),
        (None, _) => String::new(),
    };
    println!(
        "job {} ({}): {}{elapsed}",
        job.job_id, job.description, job.state
    );
    if let Some(error) = &job.error {
        println!("error: {error}");
    }
    let counts: Vec<String> = status
        .progress
        .tasks
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    println!("tasks: {}", counts.join(", "));
    let left = status
        .progress
        .seconds_left
        .map(|s| format!("; about {} left", seconds(s)))
        .unwrap_or_default();
    println!(
        "bytes: {} done, {} left, of {}{left}",
        human_bytes(Some(status.progress.bytes_done)),
        human_bytes(Some(status.progress.bytes_left)),
        human_bytes(Some(status.progress.bytes_total))
    );
    println!();
    let rows: Vec<Vec<String>> = status
        .tasks
        .iter()
        .map(|t| {
            let transfer = t
                .transfer
                .as_ref()
                .map(|tr| format!("op {} {}", tr.operation_id, tr.status))
                .unwrap_or_default();
            let progress = t.progress();
            let share = if t.bytes_total > 0 {
                format!(
                    "{:.0}%",
                    100.0 * progress.bytes_done() as f64 / t.bytes_total as f64
                )
            } else if t.state == TaskState::Done {
                "100%".to_string()
            } else {
                "-".to_string()
            };
            let mut message = t.message.clone().unwrap_or_default();
            if t.retry_count > 0 {
                message = format!("retry {}: {message}", t.retry_count);
            }
            vec![
                t.task_id.to_string(),
                t.state.to_string(),
                t.description.clone(),
                transfer,
                share,
                message,
            ]
        })
        .collect();
    print_table(
        &["task", "state", "what", "transfer", "progress", "message"],
        &rows,
    );
}

/// Follows a job until it ends, with a progress bar per running move and one overall (in
/// bytes) on a terminal, and a line per task change otherwise. When no `shoal serve` runs, an
/// executor runs the job from here. Fails unless the job finishes.
pub async fn wait_for_job(cluster: &Cluster, job_id: i64, json: bool) -> anyhow::Result<()> {
    let status = store::job_status(cluster.client(), job_id).await?;
    let foreground = if !status.job.state.is_final() && serve_daemons(cluster).await? == 0 {
        if !json {
            eprintln!(
                "no `shoal serve` is running: running job {job_id} from here (Ctrl-C stops its \
                 moves cleanly; `shoal rebalance wait` or `shoal serve` resumes it)"
            );
        }
        Some(Foreground::start(cluster.params().clone(), job_id))
    } else {
        None
    };
    let interrupted = tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    let display = Display::new(json);
    let result: anyhow::Result<JobStatus> = loop {
        let status = match store::job_status(cluster.client(), job_id).await {
            Ok(status) => status,
            Err(error) => break Err(error.into()),
        };
        display.update(&status);
        if status.job.state.is_final() {
            break Ok(status);
        }
        if interrupted.is_finished() {
            display.clear();
            if let Some(foreground) = foreground {
                eprintln!("stopping the moves started here; they remove what they built...");
                foreground.stop().await;
                bail!(
                    "stopped following job {job_id}; its tasks stay in the catalog and resume with \
                     `shoal rebalance wait` or `shoal serve` (or cancel it with `shoal rebalance stop`)"
                );
            }
            bail!("stopped following job {job_id}; it goes on in `shoal serve`");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    interrupted.abort();
    display.clear();
    if let Some(foreground) = foreground {
        foreground.stop().await;
    }
    let status = result?;
    if json {
        print_json(&status)?;
    } else {
        let elapsed = status.job.elapsed_seconds.unwrap_or(0.0);
        let done = status
            .progress
            .tasks
            .get(&TaskState::Done)
            .copied()
            .unwrap_or(0);
        println!(
            "job {job_id} {} in {}: {done} of {} task(s) done, {} transferred",
            status.job.state,
            seconds(elapsed),
            status.tasks.len(),
            human_bytes(Some(status.progress.bytes_done))
        );
    }
    match status.job.state {
        JobState::Finished => Ok(()),
        JobState::Cancelled => bail!("job {job_id} was cancelled; moves already done stay done"),
        _ => bail!(
            "job {job_id} {}: {}; see `shoal job show {job_id}`",
            status.job.state,
            status.job.error.clone().unwrap_or_default()
        ),
    }
}

/// Cancels a job and waits until its running tasks have stopped.
pub async fn stop_job(cluster: &Cluster, job_id: i64) -> anyhow::Result<()> {
    let mut client = cluster.coordinator("shoal rebalance stop").await?;
    let state = store::cancel_job(&mut client, job_id).await?;
    if state.is_final() && state != JobState::Cancelled {
        println!("job {job_id} had already ended: {state}");
        return Ok(());
    }
    // A task whose daemon is gone is settled by whoever runs an executor: run one here if no
    // daemon does.
    let foreground = if serve_daemons(cluster).await? == 0 {
        Some(Foreground::start(cluster.params().clone(), job_id))
    } else {
        None
    };
    let started = Instant::now();
    let result: anyhow::Result<JobState> = loop {
        let job = store::get_job(cluster.client(), job_id).await?;
        if job.state.is_final() {
            break Ok(job.state);
        }
        if started.elapsed() > Duration::from_secs(300) {
            break Err(anyhow::anyhow!(
                "job {job_id} is still {} after 300 s; see `shoal job show {job_id}`",
                job.state
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(foreground) = foreground {
        foreground.stop().await;
    }
    let state = result?;
    let tasks = store::tasks_of_job(cluster.client(), job_id).await?;
    let done = tasks.iter().filter(|t| t.state == TaskState::Done).count();
    println!(
        "job {job_id} {state}: {done} of {} task(s) had finished and stay done; nothing else was left behind",
        tasks.len()
    );
    Ok(())
}

/// An executor running one job from this process, while no daemon does.
struct Foreground {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Foreground {
    fn start(params: ConnectParams, job_id: i64) -> Foreground {
        let (stop, mut stopped) = watch::channel(false);
        let config = ExecutorConfig {
            only_job: Some(job_id),
            ..ExecutorConfig::new(DaemonKind::Foreground)
        };
        let handle = tokio::spawn(run_executor(params, config, async move {
            let _ = stopped.changed().await;
        }));
        Foreground { stop, handle }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// Progress on a terminal (bars), or a line per change elsewhere, or nothing (JSON).
struct Display {
    mode: DisplayMode,
    last: std::sync::Mutex<BTreeMap<i64, TaskState>>,
}

enum DisplayMode {
    Quiet,
    Lines,
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        tasks: std::sync::Mutex<BTreeMap<i64, ProgressBar>>,
    },
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Display {
    fn new(json: bool) -> Display {
        let mode = if json {
            DisplayMode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::new();
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(bar_style(
                "{msg:40} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
            ));
            DisplayMode::Bars {
                multi,
                overall,
                tasks: std::sync::Mutex::new(BTreeMap::new()),
            }
        } else {
            DisplayMode::Lines
        };
        Display {
            mode,
            last: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn update(&self, status: &JobStatus) {
        let mut last = self.last.lock().expect("not poisoned");
        let mut changes = Vec::new();
        for task in &status.tasks {
            let previous = last.insert(task.task_id, task.state);
            // Tasks still waiting when following starts are not news.
            if previous != Some(task.state) && (previous.is_some() || !task.state.is_pending()) {
                changes.push(task);
            }
        }
        match &self.mode {
            DisplayMode::Quiet => {}
            DisplayMode::Lines => {
                for task in changes {
                    let message = match (&task.message, task.state) {
                        (Some(m), TaskState::Done | TaskState::Error | TaskState::Runnable)
                            if !m.is_empty() =>
                        {
                            format!(" ({m})")
                        }
                        _ => String::new(),
                    };
                    println!(
                        "task {} {}: {}{message}",
                        task.task_id, task.state, task.description
                    );
                }
            }
            DisplayMode::Bars {
                multi,
                overall,
                tasks,
            } => {
                let done = status
                    .progress
                    .tasks
                    .get(&TaskState::Done)
                    .copied()
                    .unwrap_or(0);
                overall.set_length(status.progress.bytes_total.max(0) as u64);
                overall.set_position(status.progress.bytes_done.max(0) as u64);
                let left = status
                    .progress
                    .seconds_left
                    .map(|s| format!(", ~{} left", seconds(s)))
                    .unwrap_or_default();
                overall.set_message(format!(
                    "job {} {}: {done}/{} tasks{left}",
                    status.job.job_id,
                    status.job.state,
                    status.tasks.len()
                ));
                let mut bars = tasks.lock().expect("not poisoned");
                for task in &status.tasks {
                    let active = task.state.is_active();
                    match (active, bars.contains_key(&task.task_id)) {
                        (true, false) => {
                            let bar = multi.add(ProgressBar::new(task.bytes_total.max(0) as u64));
                            bar.set_style(bar_style("  {msg:38} [{bar:30}] {bytes}/{total_bytes}"));
                            bars.insert(task.task_id, bar);
                        }
                        (false, true) => {
                            if let Some(bar) = bars.remove(&task.task_id) {
                                bar.finish_and_clear();
                                multi.remove(&bar);
                            }
                            let _ = multi.println(format!(
                                "task {} {}: {}",
                                task.task_id, task.state, task.description
                            ));
                        }
                        _ => {}
                    }
                    if let Some(bar) = bars.get(&task.task_id) {
                        bar.set_position(task.progress().bytes_done().max(0) as u64);
                        let status = task
                            .transfer
                            .as_ref()
                            .map(|t| t.status.clone())
                            .unwrap_or_else(|| "starting".into());
                        let what = task
                            .description
                            .split(" (")
                            .next()
                            .unwrap_or(&task.description)
                            .to_string();
                        bar.set_message(format!("{what}: {status}"));
                    }
                }
                for change in changes
                    .iter()
                    .filter(|t| matches!(t.state, TaskState::Error | TaskState::Runnable))
                {
                    if let Some(message) = &change.message {
                        let _ = multi.println(format!(
                            "task {} {}: {message}",
                            change.task_id, change.state
                        ));
                    }
                }
            }
        }
    }

    fn clear(&self) {
        if let DisplayMode::Bars {
            multi,
            overall,
            tasks,
        } = &self.mode
        {
            for bar in tasks.lock().expect("not poisoned").values() {
                bar.finish_and_clear();
            }
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }
}
