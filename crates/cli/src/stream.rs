//! `shoal stream ...`: create, change, refresh, drop and watch stream tables.

use crate::args::{StreamCommand, StreamMode};
use crate::output::{print_json, print_table};
use shoal_cluster::Cluster;
use shoal_stream::runtime::{self, StreamOptions};
use shoal_stream::Mode;

fn mode(mode: StreamMode) -> Mode {
    match mode {
        StreamMode::Auto => Mode::Auto,
        StreamMode::Differential => Mode::Differential,
        StreamMode::Full => Mode::Full,
    }
}

pub async fn run(cluster: &Cluster, command: StreamCommand) -> anyhow::Result<()> {
    match command {
        StreamCommand::Create {
            name,
            query,
            schedule,
            mode: requested,
        } => {
            let options = StreamOptions {
                schedule,
                mode: mode(requested),
            };
            let info = runtime::create_stream(cluster, &name, &query, &options).await?;
            println!(
                "created stream table {} ({} refresh every {} ms, {} row(s))",
                info.name,
                info.refresh_mode,
                info.schedule_ms,
                info.rows.unwrap_or(0)
            );
            if let Some(reason) = info.mode_reason {
                println!("note: {reason}");
            }
            println!(
                "`shoal serve` keeps it up to date; `shoal stream refresh {name}` refreshes it now"
            );
        }
        StreamCommand::Alter {
            name,
            schedule,
            mode: requested,
        } => {
            let info = runtime::alter_stream(cluster, &name, schedule, requested.map(mode)).await?;
            println!(
                "{}: {} refresh every {} ms",
                info.name, info.refresh_mode, info.schedule_ms
            );
            if let Some(reason) = info.mode_reason {
                println!("note: {reason}");
            }
        }
        StreamCommand::Drop { name } => {
            runtime::drop_stream(cluster, &name).await?;
            println!("dropped stream table {name}");
        }
        StreamCommand::Refresh { name, full } => {
            runtime::poll_all(cluster, 100_000, 5, true).await?;
            let stream_id = stream_id(cluster, &name).await?;
            let report = runtime::refresh_stream(cluster, stream_id, full).await?;
            println!(
                "{name}: {} refresh, {} row(s) changed, {:.1} ms",
                report.mode, report.rows_changed, report.ms
            );
        }
        StreamCommand::List(json) => {
            let streams = runtime::list_streams(cluster.client()).await?;
            if json.json {
                return print_json(&streams);
            }
            let rows: Vec<Vec<String>> = streams
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.refresh_mode.clone(),
                        format!("{} ms", s.schedule_ms),
                        s.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                        s.storage
                            .clone()
                            .unwrap_or_else(|| "(run `shoal init`)".into()),
                        s.last_refresh_at.clone().unwrap_or_else(|| "-".into()),
                        s.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "stream table",
                    "mode",
                    "schedule",
                    "rows",
                    "storage",
                    "last refresh",
                    "last error",
                ],
                &rows,
            );
        }
        StreamCommand::Status(json) => {
            let rows = cluster
                .client()
                .query(
                    "SELECT stream_table::text, node_id, host || ':' || port, frontier::text,
                            to_char(last_poll_at, 'HH24:MI:SS.MS'), consecutive_failures, alert,
                            coalesce(lease_holder, '-'), lease_health,
                            coalesce(round(last_refresh_ms::numeric, 1)::text, '-'),
                            coalesce(last_refresh_mode, '-'), coalesce(last_rows_changed, 0)
                     FROM shoal.stream_status ORDER BY stream_id, node_id",
                    &[],
                )
                .await?;
            if json.json {
                let out: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "stream_table": r.get::<_, String>(0),
                            "node_id": r.get::<_, i32>(1),
                            "address": r.get::<_, String>(2),
                            "frontier": r.get::<_, String>(3),
                            "last_poll": r.get::<_, Option<String>>(4),
                            "consecutive_failures": r.get::<_, i32>(5),
                            "alert": r.get::<_, bool>(6),
                            "lease_holder": r.get::<_, String>(7),
                            "lease_health": r.get::<_, String>(8),
                            "last_refresh_ms": r.get::<_, String>(9),
                            "last_refresh_mode": r.get::<_, String>(10),
                            "rows_changed": r.get::<_, i64>(11),
                        })
                    })
                    .collect();
                return print_json(&out);
            }
            let text: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.get::<_, String>(0),
                        format!("{} ({})", r.get::<_, i32>(1), r.get::<_, String>(2)),
                        r.get::<_, String>(3),
                        r.get::<_, Option<String>>(4).unwrap_or_else(|| "-".into()),
                        format!(
                            "{}{}",
                            r.get::<_, i32>(5),
                            if r.get::<_, bool>(6) { " ALERT" } else { "" }
                        ),
                        format!("{} ({})", r.get::<_, String>(8), r.get::<_, String>(7)),
                        format!("{} ms {}", r.get::<_, String>(9), r.get::<_, String>(10)),
                    ]
                })
                .collect();
            print_table(
                &[
                    "stream table",
                    "node",
                    "frontier",
                    "last poll",
                    "failures",
                    "lease",
                    "last refresh",
                ],
                &text,
            );
        }
    }
    Ok(())
}

async fn stream_id(cluster: &Cluster, name: &str) -> anyhow::Result<i32> {
    let row = cluster
        .client()
        .query_opt(
            "SELECT stream_id FROM shoal.stream_table WHERE relid = to_regclass($1)",
            &[&name],
        )
        .await
        .ok()
        .flatten();
    row.map(|r| r.get(0))
        .ok_or_else(|| anyhow::anyhow!("no stream table {name}; see `shoal stream list`"))
}

/// After `shoal init`'s catalog migrations: moves stream tables of the layout before storage
/// tables to the current one, saying so, and warns of users' views that read their old tables.
pub async fn upgrade_layouts(cluster: &Cluster) -> anyhow::Result<()> {
    for upgraded in runtime::upgrade_layouts(cluster).await? {
        println!(
            "stream table {} now shows its query's rows; its storage is {}",
            upgraded.name, upgraded.storage
        );
        for view in &upgraded.dependent_views {
            eprintln!(
                "warning: view {view} read the old table of stream table {} and now reads its \
                 storage ({}: one row per distinct row, with hidden columns); create it again \
                 over {}",
                upgraded.name, upgraded.storage, upgraded.name
            );
        }
    }
    Ok(())
}
