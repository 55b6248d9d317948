//! `shard move`, `shard copy`, `schema move` and `shard cancel`: run a transfer with a progress
//! bar, or start it in the background.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{TransferArgs, TransferMode};
use crate::output::{human_bytes, print_json};
use shoal_cluster::Cluster;
use shoal_transfer::{
    request_cancel, transfer_state, CancelToken, Mode, Operation, Transfer, TransferReport,
    TransferRequest, Tuning,
};

pub fn mode(mode: TransferMode) -> Mode {
    match mode {
        TransferMode::Auto => Mode::Auto,
        TransferMode::ForceLogical => Mode::ForceLogical,
        TransferMode::BlockWrites => Mode::BlockWrites,
    }
}

/// The shard that stands for a distributed schema's shard group.
pub async fn schema_anchor(cluster: &Cluster, schema: &str) -> anyhow::Result<i64> {
    let row = cluster
        .client()
        .query_opt(
            "SELECT s.shard_id FROM shoal.shard s
             JOIN shoal.distributed_table t USING (table_id)
             JOIN shoal.colocation_group g USING (colocation_id)
             WHERE g.kind = 'schema' AND g.schema_name = (
                 SELECT nspname::text FROM pg_namespace WHERE oid = to_regnamespace($1))
             ORDER BY s.shard_id LIMIT 1",
            &[&schema],
        )
        .await;
    match row {
        Ok(Some(row)) => Ok(row.get(0)),
        Ok(None) | Err(_) => {
            bail!("schema {schema} is not a distributed schema with tables; see `shoal table list`")
        }
    }
}

pub async fn run(
    cluster: &Cluster,
    shard_id: i64,
    operation: Operation,
    mode: Mode,
    args: &TransferArgs,
) -> anyhow::Result<()> {
    if args.no_wait {
        return start_in_background(cluster, shard_id).await;
    }
    let request = TransferRequest {
        shard_id,
        target: args.to.clone(),
        mode,
        operation,
    };
    let transfer = Transfer::prepare(cluster, &request, Tuning::default()).await?;
    let operation_id = transfer.operation_id();
    if let Some(reason) = &transfer.mode().reason {
        eprintln!("note: using block_writes: {reason}");
    }
    if !args.json {
        println!(
            "operation {operation_id}: {} shard {shard_id} ({}) from node {} ({}) to node {} ({}), mode {}",
            operation.as_str(),
            transfer.group().describe(),
            transfer.source().node_id,
            transfer.source().address(),
            transfer.target().node_id,
            transfer.target().address(),
            transfer.mode().mode.as_str()
        );
    }
    let cancel = CancelToken::default();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: removing what the transfer built...");
            on_signal.cancel();
        }
    });
    let watcher = tokio::spawn(watch(
        cluster.coordinator("shoal progress").await?,
        operation_id,
        args.json,
    ));
    let result = transfer.run(cancel).await;
    watcher.abort();
    let _ = watcher.await;
    let mut report = result?;
    let warnings = shoal_transfer::refresh_moved_statistics(cluster, &report).await;
    report.warnings.extend(warnings);
    print_report(&report, args.json)
}

fn print_report(report: &TransferReport, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    println!(
        "{} of shard {} to {} completed in {:.2} s: {} copied, writes blocked for {:.1} ms",
        report.operation.as_str(),
        report.anchor_shard_id,
        report.target,
        report.elapsed_ms / 1000.0,
        human_bytes(Some(report.bytes)),
        report.write_block_ms
    );
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    Ok(())
}

/// Shows the transfer's status and bytes from the catalog: a progress bar on a terminal, a line
/// per status change otherwise.
async fn watch(client: tokio_postgres::Client, operation_id: i64, quiet: bool) {
    let terminal = std::io::stderr().is_terminal() && !quiet;
    let bar = if terminal {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:22} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut last_status = String::new();
    loop {
        if let Ok(Some(state)) = transfer_state(&client, operation_id).await {
            bar.set_length(state.bytes_total.unwrap_or(0).max(0) as u64);
            bar.set_position(state.bytes_done.unwrap_or(0).max(0) as u64);
            let mut message = state.status.clone();
            if let Some(pid) = state.waiting_for_pid {
                message = format!("{message} (waiting for pid {pid})");
            }
            bar.set_message(message.clone());
            if !terminal && !quiet && state.status != last_status {
                println!("status: {}", state.status);
            }
            last_status = state.status;
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--no-wait`: runs the same command, without `--no-wait`, as a detached process whose output
/// goes to a log file, and returns once its transfer is registered.
async fn start_in_background(cluster: &Cluster, shard_id: i64) -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--no-wait")
        .collect();
    let log = std::env::temp_dir().join(format!(
        "shoal-transfer-{}-{shard_id}.log",
        std::process::id()
    ));
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // A session of its own, so closing this terminal does not stop the transfer.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .context("cannot start the background transfer")?;
    let started = Instant::now();
    loop {
        let row = cluster
            .client()
            .query_opt(
                "SELECT operation_id FROM shoal.transfer WHERE anchor_shard_id = $1
                   AND started_at >= now() - interval '1 minute'
                 ORDER BY operation_id DESC LIMIT 1",
                &[&shard_id],
            )
            .await?;
        if let Some(row) = row {
            let operation_id: i64 = row.get(0);
            println!(
                "operation {operation_id} started in the background (log: {})",
                log.display()
            );
            println!("follow it with: SELECT * FROM shoal.rebalance_progress WHERE operation_id = {operation_id}");
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let error = output
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or(output.trim());
            bail!(
                "the transfer did not start ({status}): {}",
                error.trim_start_matches("error: ")
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the background transfer has not registered after 60 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `shard cancel`: asks the transfer to stop and waits until it has cleaned up.
pub async fn cancel(cluster: &Cluster, operation_id: i64) -> anyhow::Result<()> {
    request_cancel(cluster, operation_id).await?;
    let started = Instant::now();
    loop {
        let state = transfer_state(cluster.client(), operation_id).await?;
        if let Some(state) = state.filter(|s| s.finished) {
            println!("operation {operation_id}: {}", state.status);
            if let Some(error) = state.error {
                println!("{error}");
            }
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("operation {operation_id} has not stopped after 120 s; is its process still running?");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
