//! `shoal job ...`: every background job, whatever its kind.

use clap::Subcommand;

use crate::args::JsonFlag;
use crate::output::{human_bytes, print_json, print_table};
use shoal_cluster::Cluster;
use shoal_jobs::store;
use shoal_jobs::TaskState;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List background jobs, newest first
    List {
        /// How many to list
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show a job with each of its tasks
    Show {
        job: i64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Follow a job with progress bars until it ends
    Wait {
        job: i64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Cancel a job: running tasks stop and remove what they built, the others do not start
    Cancel { job: i64 },
}

pub async fn run(cluster: &Cluster, command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::List { limit, json } => {
            let jobs = store::list_jobs(cluster.client(), limit).await?;
            let mut statuses = Vec::new();
            for job in &jobs {
                statuses.push(store::job_status(cluster.client(), job.job_id).await?);
            }
            if json.json {
                #[derive(serde::Serialize)]
                struct Out<'a> {
                    #[serde(flatten)]
                    job: &'a store::Job,
                    progress: &'a shoal_jobs::progress::JobProgress,
                }
                let out: Vec<Out> = statuses
                    .iter()
                    .map(|s| Out {
                        job: &s.job,
                        progress: &s.progress,
                    })
                    .collect();
                return print_json(&out);
            }
            let rows: Vec<Vec<String>> = statuses
                .iter()
                .map(|s| {
                    let done = s.progress.tasks.get(&TaskState::Done).copied().unwrap_or(0);
                    vec![
                        s.job.job_id.to_string(),
                        s.job.kind.clone(),
                        s.job.state.to_string(),
                        format!("{done}/{}", s.tasks.len()),
                        human_bytes(Some(s.progress.bytes_total)),
                        s.job.created_at.clone(),
                        s.job
                            .elapsed_seconds
                            .map(|e| format!("{e:.1} s"))
                            .unwrap_or_else(|| "-".into()),
                        s.job.description.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "job",
                    "kind",
                    "state",
                    "tasks done",
                    "size",
                    "created",
                    "ran for",
                    "description",
                ],
                &rows,
            );
            Ok(())
        }
        JobCommand::Show { job, json } => {
            let status = store::job_status(cluster.client(), job).await?;
            if json.json {
                return print_json(&status);
            }
            crate::rebalance::print_status(&status);
            Ok(())
        }
        JobCommand::Wait { job, json } => {
            store::get_job(cluster.client(), job).await?;
            crate::rebalance::wait_for_job(cluster, job, json.json).await
        }
        JobCommand::Cancel { job } => {
            store::get_job(cluster.client(), job).await?;
            crate::rebalance::stop_job(cluster, job).await
        }
    }
}
