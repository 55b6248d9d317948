//! PostgreSQL 18's way: a node's own statistics of a shard, read as text, copied onto the
//! coordinator's foreign table and the shard's partitioned table (`pg_restore_*_stats`).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::refresh::{split, Shard};
use super::{
    node_column_stats_sql, ShardAction, CLEAR_COLUMNS_SQL, RESTORE_COLUMNS_SQL,
    RESTORE_RELATION_SQL,
};
use crate::error::{ClusterError, PgContext};
use shoal_sql::QualifiedName;

/// The statistics a node has of one shard table.
#[derive(Default)]
pub(super) struct NodeStatistics {
    relpages: i32,
    reltuples: f32,
    version: i32,
    columns: Vec<ColumnStatistics>,
}

/// One row of the node's `pg_stats`, in [`node_column_stats_sql`]'s order.
struct ColumnStatistics {
    name: String,
    null_frac: Option<f32>,
    avg_width: Option<i32>,
    n_distinct: Option<f32>,
    /// most_common_vals, most_common_freqs, histogram_bounds, most_common_elems,
    /// most_common_elem_freqs, elem_count_histogram, range_length_histogram,
    /// range_bounds_histogram.
    texts: [Option<String>; 8],
    correlation: Option<f32>,
    range_empty_frac: Option<f32>,
}

/// What a node has of the shard tables `read`: relation and column statistics.
pub(super) async fn read_statistics(
    client: &Client,
    node_version: i32,
    read: &[QualifiedName],
) -> Result<Vec<(QualifiedName, NodeStatistics)>, ClusterError> {
    let (schemas, tables) = split(read);
    let mut out: HashMap<QualifiedName, NodeStatistics> = HashMap::new();
    for row in client
        .query(
            "SELECT t.schema_name, t.table_name, c.relpages, c.reltuples
             FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name)
             JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name",
            &[&schemas, &tables],
        )
        .await?
    {
        out.insert(
            QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
            NodeStatistics {
                relpages: row.get(2),
                reltuples: row.get(3),
                version: node_version,
                columns: Vec::new(),
            },
        );
    }
    for row in client
        .query(&node_column_stats_sql(node_version), &[&schemas, &tables])
        .await
        .context(|| "reading shard column statistics".to_string())?
    {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let Some(stats) = out.get_mut(&name) else {
            continue;
        };
        stats.columns.push(ColumnStatistics {
            name: row.get(2),
            null_frac: row.get(3),
            avg_width: row.get(4),
            n_distinct: row.get(5),
            texts: [
                row.get(6),
                row.get(7),
                row.get(8),
                row.get(10),
                row.get(11),
                row.get(12),
                row.get(13),
                row.get(15),
            ],
            correlation: row.get(9),
            range_empty_frac: row.get(14),
        });
    }
    Ok(out.into_iter().collect())
}

/// Copies a node's statistics of a shard onto the coordinator's foreign table and the shard's
/// partitioned table, in one transaction.
pub(super) async fn restore_shard(
    coordinator: &Client,
    shard: &Shard,
    action: &ShardAction,
    stats: &NodeStatistics,
) -> Result<(), ClusterError> {
    let mut targets: Vec<(&QualifiedName, bool)> = Vec::new();
    if action.leaf {
        targets.push((&shard.placement.shard_table, false));
    }
    if action.middle {
        targets.push((&shard.middle, true));
    }
    let names: Vec<&str> = stats.columns.iter().map(|c| c.name.as_str()).collect();
    let null_frac: Vec<Option<f32>> = stats.columns.iter().map(|c| c.null_frac).collect();
    let avg_width: Vec<Option<i32>> = stats.columns.iter().map(|c| c.avg_width).collect();
    let n_distinct: Vec<Option<f32>> = stats.columns.iter().map(|c| c.n_distinct).collect();
    let correlation: Vec<Option<f32>> = stats.columns.iter().map(|c| c.correlation).collect();
    let empty_frac: Vec<Option<f32>> = stats.columns.iter().map(|c| c.range_empty_frac).collect();
    let text = |i: usize| -> Vec<Option<&str>> {
        stats
            .columns
            .iter()
            .map(|c| c.texts[i].as_deref())
            .collect()
    };
    let (mcv, mcf, hist, mce, mcef, ech, rlh, rbh) = (
        text(0),
        text(1),
        text(2),
        text(3),
        text(4),
        text(5),
        text(6),
        text(7),
    );
    let context = || format!("copying the statistics of {}", shard.placement.shard_table);
    coordinator.batch_execute("BEGIN").await.context(context)?;
    let result = async {
        // The shard's partitioned table before its foreign table, as a move's cutover locks
        // them: the other order could make the two wait for each other.
        coordinator
            .batch_execute(&format!(
                "LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE",
                shard.middle.quoted()
            ))
            .await
            .context(context)?;
        for (relation, inherited) in &targets {
            coordinator
                .query(
                    CLEAR_COLUMNS_SQL,
                    &[&relation.schema, &relation.name, inherited],
                )
                .await
                .context(context)?;
            coordinator
                .query(
                    RESTORE_COLUMNS_SQL,
                    &[
                        &relation.schema,
                        &relation.name,
                        inherited,
                        &stats.version,
                        &names,
                        &null_frac,
                        &avg_width,
                        &n_distinct,
                        &mcv,
                        &mcf,
                        &hist,
                        &correlation,
                        &mce,
                        &mcef,
                        &ech,
                        &rlh,
                        &empty_frac,
                        &rbh,
                    ],
                )
                .await
                .context(context)?;
            // A partitioned table has no pages of its own.
            let pages = if *inherited { 0 } else { stats.relpages };
            coordinator
                .query(
                    RESTORE_RELATION_SQL,
                    &[&relation.schema, &relation.name, &pages, &stats.reltuples],
                )
                .await
                .context(context)?;
        }
        Ok::<_, ClusterError>(())
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = coordinator.batch_execute(end).await.context(context);
    result.and(ended)
}
