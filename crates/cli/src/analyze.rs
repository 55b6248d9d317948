//! `shoal analyze`: the coordinator's planner statistics of distributed tables, refreshed from
//! the shards where they went stale (see `shoal_cluster::statistics`).

use clap::Args;

use crate::output::{print_json, print_table};
use shoal_cluster::statistics::{self, Scope, TableReport};
use shoal_cluster::Cluster;

/// Refresh the coordinator's planner statistics of distributed tables from their shards.
///
/// Each node analyzes its own shards where they changed by more than 10% (all nodes at once),
/// then the coordinator's relations of those shards get the shards' statistics: on PostgreSQL
/// 18 copied from the nodes' own statistics (no rows read), on 16 and 17 by ANALYZE over samples
/// taken on the nodes, on 15 by ANALYZE, which reads the stale shards' rows. The table's own
/// statistics (joins and groupings over all shards) follow when the table changed by more than
/// 10%. `shoal serve` does the same every --statistics-interval seconds.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    shoal analyze\n  \
    shoal analyze orders '\"Order Items\"'\n  \
    shoal analyze orders --force --json")]
pub struct AnalyzeArgs {
    /// Tables (names as in SQL); all distributed tables when none is given
    pub tables: Vec<String>,
    /// Refresh everything, whatever changed
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: crate::args::JsonFlag,
}

pub async fn run(cluster: &Cluster, args: AnalyzeArgs) -> anyhow::Result<()> {
    let scope = Scope {
        tables: args.tables.clone(),
        shards: Vec::new(),
        force: args.force,
    };
    let json = args.json.json;
    let report = statistics::refresh(cluster, &scope, |table| {
        if !json {
            eprintln!("{}", progress_line(table));
        }
    })
    .await?;
    if json {
        print_json(&report)?;
    } else {
        println!("method: {}", report.method.describe());
        let rows: Vec<Vec<String>> = report
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.to_string(),
                    t.shards.to_string(),
                    t.analyzed_on_nodes.to_string(),
                    t.refreshed.to_string(),
                    if t.table_refreshed { "yes" } else { "no" }.to_string(),
                    format!("{:.0}", t.elapsed_ms),
                ]
            })
            .collect();
        print_table(
            &[
                "table",
                "shards",
                "analyzed on nodes",
                "refreshed",
                "table stats",
                "ms",
            ],
            &rows,
        );
        println!("total {:.0} ms", report.elapsed_ms);
    }
    let errors = report.errors();
    let unreachable: usize = report.tables.iter().map(|t| t.unreachable.len()).sum();
    if !errors.is_empty() {
        anyhow::bail!(
            "some statistics were not refreshed: {}; run `shoal analyze` again once that is fixed",
            errors.join("; ")
        );
    }
    if unreachable > 0 {
        anyhow::bail!(
            "{unreachable} shard(s) were left as they were because their node could not be \
             read; see `shoal node list`, then run `shoal analyze` again"
        );
    }
    Ok(())
}

fn progress_line(table: &TableReport) -> String {
    if table.refreshed == 0 && !table.table_refreshed && table.errors.is_empty() {
        return format!("{}: up to date", table.table);
    }
    format!(
        "{}: {} of {} shard(s) refreshed{}{} in {:.0} ms",
        table.table,
        table.refreshed,
        table.shards,
        if table.table_refreshed {
            ", and the table's own statistics"
        } else {
            ""
        },
        if table.errors.is_empty() {
            String::new()
        } else {
            format!(" ({} error(s))", table.errors.len())
        },
        table.elapsed_ms
    )
}
