//! `shoal serve`: the daemon. It runs duties side by side until Ctrl-C or SIGTERM:
//! - the stream scheduler: follows the topology, captures every node's changes and refreshes
//!   the stream tables that are due, each under a lease;
//! - the executor of background jobs (rebalances, drains), see `shoal-jobs`;
//! - Shoal's PostgreSQL endpoint (`--listen`), see `shoal-endpoint`;
//! - the HTTP endpoint (`--http`): `/metrics` (Prometheus) and `/status` (JSON);
//! - the statistics loop, which gives the coordinator new planner statistics of the shards
//!   that changed by more than 10% (`shoal_cluster::statistics`, as `shoal analyze`);
//! - the cleanup loop, which removes what finished operations left for later (a source shard
//!   still being read when its move completed) and what failed ones could not remove at once
//!   (a node that was down).
//!
//! Several daemons may run against one coordinator: the catalog's locks and leases decide who
//! does what, and every duty is safe to repeat. Each duty gets its own coordinator connection and
//! reconnects after an error.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::args::ServeArgs;
use shoal_catalog::ConnectParams;
use shoal_cluster::{cleanup, statistics, Cluster};

/// Tells a duty to stop: `changed()` resolves when the daemon shuts down.
pub type Shutdown = watch::Receiver<bool>;

pub async fn run(params: ConnectParams, args: &ServeArgs) -> anyhow::Result<()> {
    let (stop, shutdown) = watch::channel(false);
    let mut duties = tokio::task::JoinSet::new();
    duties.spawn(every(
        "cleanup",
        params.clone(),
        Duration::from_secs(args.cleanup_interval),
        shutdown.clone(),
        |cluster| async move { cleanup_pass(&cluster).await },
    ));
    if args.statistics_interval > 0 {
        duties.spawn(every(
            "statistics",
            params.clone(),
            Duration::from_secs(args.statistics_interval),
            shutdown.clone(),
            |cluster| async move { statistics_pass(&cluster).await },
        ));
    }
    let holder = format!(
        "{}:{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut scheduler = shoal_stream::runtime::SchedulerConfig::new(holder);
    scheduler.retry_ticks = args.worker_retry_ticks;
    let config = std::sync::Arc::new(scheduler);
    duties.spawn(every(
        "stream scheduler",
        params.clone(),
        Duration::from_millis(200),
        shutdown.clone(),
        move |cluster| {
            let config = config.clone();
            async move {
                let report = shoal_stream::runtime::tick(&cluster, &config).await?;
                if report.changes_captured > 0 || !report.refreshed.is_empty() {
                    tracing::debug!(?report, "stream scheduler tick");
                }
                Ok(())
            }
        },
    ));
    // Background jobs (rebalances, drains): the executor, with its own connection (shoal-jobs).
    let executor = args.executor.config(shoal_jobs::DaemonKind::Serve);
    eprintln!(
        "shoal serve: background jobs run up to {} task(s) at once, {} per node",
        executor.limits.max_parallel, executor.limits.max_parallel_per_node
    );
    duties.spawn(crate::rebalance::executor_duty(
        params.clone(),
        executor,
        shutdown.clone(),
    ));
    eprintln!(
        "shoal serve: cleanup every {} s, planner statistics checked every {} s, stream tables \
         refreshed on their schedules, deadlocks across nodes looked for every second; Ctrl-C or \
         SIGTERM stops it",
        args.cleanup_interval, args.statistics_interval
    );
    let mut endpoint = None;
    if args.listen == "off" {
        // The endpoint watches its sessions and the coordinator's together; without it, the
        // coordinator's sessions still need their deadlocks across nodes broken.
        duties.spawn(shoal_cluster::deadlock::watch(
            params.clone(),
            shoal_cluster::deadlock::CoordinatorOnly,
            shutdown.clone(),
        ));
    } else {
        let options = shoal_endpoint::Options {
            scatter_connections: usize::from(args.scatter_connections),
        };
        let (started, duty) =
            shoal_endpoint::start(params.clone(), &args.listen, options, shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("the PostgreSQL endpoint did not start: {e}"))?;
        eprintln!(
            "shoal serve: applications connect to postgresql://{}/{} (same users and passwords as the coordinator)",
            started.address, params.dbname
        );
        endpoint = Some(started.shared.clone());
        duties.spawn(async move {
            let _ = duty.await;
        });
    }
    if args.http != "off" {
        let address: std::net::SocketAddr = args.http.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid --http {}; use HOST:PORT (e.g. 127.0.0.1:9187) or off",
                args.http
            )
        })?;
        let (params, shutdown) = (params.clone(), shutdown.clone());
        duties.spawn(async move {
            if let Err(error) = crate::http::serve(address, params, endpoint, shutdown).await {
                tracing::warn!(%error, "the HTTP endpoint stopped");
            }
        });
        eprintln!(
            "shoal serve: metrics at http://{address}/metrics, status at http://{address}/status"
        );
    }
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let _ = stop.send(true);
    while duties.join_next().await.is_some() {}
    eprintln!("shoal serve: stopped");
    Ok(())
}

/// Runs `pass` every `interval` with a coordinator connection of its own, reconnecting after
/// errors, until shutdown.
pub async fn every<F, Fut>(
    name: &'static str,
    params: ConnectParams,
    interval: Duration,
    mut shutdown: Shutdown,
    mut pass: F,
) where
    F: FnMut(std::sync::Arc<Cluster>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut cluster: Option<std::sync::Arc<Cluster>> = None;
    loop {
        if cluster.is_none() {
            match Cluster::connect(params.clone()).await {
                Ok(connected) => cluster = Some(std::sync::Arc::new(connected)),
                Err(error) => {
                    tracing::warn!(duty = name, %error, "coordinator unreachable; will retry")
                }
            }
        }
        if let Some(current) = &cluster {
            if let Err(error) = pass(current.clone()).await {
                tracing::warn!(duty = name, %error, "pass failed; will retry with a new connection");
                cluster = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn statistics_pass(cluster: &Cluster) -> anyhow::Result<()> {
    let report = statistics::refresh(cluster, &statistics::Scope::default(), |table| {
        if table.refreshed > 0 || table.table_refreshed {
            tracing::info!(
                table = %table.table,
                shards = table.refreshed,
                whole_table = table.table_refreshed,
                elapsed_ms = table.elapsed_ms,
                "statistics refreshed"
            );
        }
    })
    .await?;
    for error in report.errors() {
        tracing::warn!(%error, "statistics: will retry");
    }
    Ok(())
}

async fn cleanup_pass(cluster: &Cluster) -> anyhow::Result<()> {
    let report = cleanup::run_cleanup(cluster, None).await?;
    for removed in &report.removed {
        tracing::info!(object = %removed, "cleanup: removed");
    }
    for failed in &report.failed {
        tracing::warn!(object = %failed, "cleanup: will retry");
    }
    Ok(())
}
