//! `shoal serve`: the daemon. Today it runs the cleanup loop, which removes what finished
//! operations left for later (a source shard that was still being read when its move completed)
//! and what failed ones could not remove at once (a node that was down). Several daemons may run
//! against one coordinator: operation locks keep them from touching a running operation's
//! objects, and removing an object twice is harmless.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::args::ServeArgs;
use shoal_cluster::{cleanup, Cluster};

pub async fn run(mut cluster: Cluster, args: &ServeArgs) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let interval = Duration::from_secs(args.cleanup_interval);
    tracing::info!(
        interval_s = args.cleanup_interval,
        "shoal serve: cleanup loop started"
    );
    eprintln!(
        "shoal serve: cleanup every {} s; Ctrl-C or SIGTERM stops it",
        args.cleanup_interval
    );
    loop {
        match cleanup::run_cleanup(&cluster, None).await {
            Ok(report) => {
                for removed in &report.removed {
                    tracing::info!(object = %removed, "cleanup: removed");
                }
                for failed in &report.failed {
                    tracing::warn!(object = %failed, "cleanup: will retry");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cleanup pass failed; reconnecting to the coordinator");
                match Cluster::connect(cluster.params().clone()).await {
                    Ok(fresh) => cluster = fresh,
                    Err(error) => tracing::warn!(%error, "coordinator unreachable; will retry"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    eprintln!("shoal serve: stopped");
    Ok(())
}
