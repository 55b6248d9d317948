//! Creating, changing and dropping stream tables.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use tokio_postgres::GenericClient;

use super::refresh::{load_stream, refresh_stream};
use crate::{
    analyze, choose_mode, probe_sql, storage_ddl, storage_table, values_tables, view_ddl,
    AnalyzeError, ColumnType, GenerateError, Mode, QueryPlan, SourceRef, STORAGE_SCHEMA,
};
use shoal_catalog::model::{self, TableKind};
use shoal_catalog::CatalogError;
use shoal_cluster::capture;
use shoal_cluster::{pg_message, Cluster, ClusterError};
use shoal_sql::QualifiedName;

#[derive(Debug, Error)]
pub enum StreamError {
    #[error("{0}")]
    Analyze(#[from] AnalyzeError),
    #[error("{0}")]
    Generate(#[from] GenerateError),
    #[error("{0}")]
    Refused(String),
    #[error("change capture: {0}")]
    Capture(String),
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Postgres(String),
}

impl From<tokio_postgres::Error> for StreamError {
    fn from(error: tokio_postgres::Error) -> Self {
        StreamError::Postgres(pg_message(&error))
    }
}

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub schedule: Duration,
    pub mode: Mode,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub stream_id: i32,
    pub name: String,
    pub query: String,
    pub requested_mode: String,
    pub refresh_mode: String,
    pub mode_reason: Option<String>,
    pub schedule_ms: i32,
    pub needs_reinit: bool,
    pub last_refresh_at: Option<String>,
    pub last_refresh_ms: Option<f64>,
    pub last_refresh_mode: Option<String>,
    pub last_rows_changed: Option<i64>,
    pub last_error: Option<String>,
    /// The query's rows, as the stream table shows them.
    pub rows: Option<i64>,
    /// The table a refresh maintains (indexes for reading the stream table go there); none
    /// for a stream table of the layout before storage tables, until `shoal init` moves it.
    pub storage: Option<String>,
}

/// A stream table as the catalog records it, with what a refresh needs.
pub(crate) struct Stream {
    /// The relation users query: a view (or, before `shoal init` moved it, the storage itself).
    pub view: QualifiedName,
    /// The table refreshes maintain.
    pub storage: QualifiedName,
    /// Whether the storage is a table of its own behind a view (not the layout before that).
    pub has_view: bool,
    pub refresh_mode: String,
    pub needs_reinit: bool,
    pub consumed_seq: i64,
    /// The coordinator relation of each source, by the name the query uses.
    pub sources: Vec<(SourceRef, QualifiedName, i32)>,
}

/// Resolves a source as the query names it, with the stream table's search path.
async fn resolve_source(
    client: &impl GenericClient,
    source: &SourceRef,
    search_path: &str,
) -> Result<(u32, QualifiedName), StreamError> {
    let text = match &source.schema {
        Some(schema) => QualifiedName::new(schema, &source.name).quoted(),
        None => shoal_sql::quote_ident(&source.name),
    };
    let row = client
        .query_one(
            "SELECT c.oid, n.nspname::text, c.relname::text
             FROM (SELECT set_config('search_path', $2, true)) _,
                  pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)",
            &[&text, &search_path],
        )
        .await
        .map_err(|_| StreamError::Refused(format!("the query's table {text} does not exist")))?;
    Ok((
        row.get(0),
        QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
    ))
}

fn stream_key(stream_id: i32) -> String {
    format!("stream:{stream_id}")
}

/// Finds a stream table by its SQL name.
pub(crate) async fn find_stream(
    client: &impl GenericClient,
    name: &str,
) -> Result<i32, StreamError> {
    let row = client
        .query_opt(
            "SELECT stream_id FROM shoal.stream_table WHERE relid = to_regclass($1)",
            &[&name],
        )
        .await
        .ok()
        .flatten();
    row.map(|r| r.get(0)).ok_or_else(|| {
        StreamError::Refused(format!("no stream table {name}; see `shoal stream list`"))
    })
}

pub async fn create_stream(
    cluster: &Cluster,
    name: &str,
    query: &str,
    options: &StreamOptions,
) -> Result<StreamInfo, StreamError> {
    let analysis = analyze(query);
    let chosen = choose_mode(&analysis, options.mode)?;
    let plan = analysis?;
    let schedule_ms = i32::try_from(options.schedule.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            StreamError::Refused("the schedule must be between 1 ms and 24 days".into())
        })?;
    shoal_cluster::capture::check_capture_privileges(cluster).await?;
    let client = cluster.client();
    let target = client
        .query_one(
            "SELECT coalesce(p[1], current_schema())::text, p[array_length(p, 1)]::text,
                    to_regclass($1) IS NOT NULL, current_setting('search_path'), array_length(p, 1)
             FROM parse_ident($1) p",
            &[&name],
        )
        .await
        .map_err(|_| StreamError::Refused(format!("{name} is not a valid table name")))?;
    if target.get::<_, bool>(2) {
        return Err(StreamError::Refused(format!(
            "a relation named {name} already exists; choose another name"
        )));
    }
    let may_store: bool = client
        .query_one(
            "SELECT has_schema_privilege($1, 'CREATE')",
            &[&STORAGE_SCHEMA],
        )
        .await?
        .get(0);
    if !may_store {
        return Err(StreamError::Refused(format!(
            "stream tables keep their rows in schema {STORAGE_SCHEMA}, where this role may not \
             create tables; run `GRANT CREATE ON SCHEMA {STORAGE_SCHEMA} TO <this role>` as its owner"
        )));
    }
    let parts: i32 = target.get(4);
    let table = if parts > 1 {
        QualifiedName::new(target.get::<_, String>(0), target.get::<_, String>(1))
    } else {
        QualifiedName::new(
            client
                .query_one("SELECT current_schema()::text", &[])
                .await?
                .get::<_, String>(0),
            target.get::<_, String>(1),
        )
    };
    let search_path: String = target.get(3);

    // Every source must be distributed or a reference table: only those are captured.
    let mut sources = Vec::new();
    for relation in &plan.relations {
        let (relid, qualified) = resolve_source(client, relation, &search_path).await?;
        let dist = model::get_table_by_relid(client, relid).await?.ok_or_else(|| {
            StreamError::Refused(format!(
                "{qualified} is not a distributed or reference table; stream tables are fed by \
                 change capture on the nodes (run `shoal table distribute` or `shoal table reference` first)"
            ))
        })?;
        sources.push(dist);
    }
    prepare_capture(cluster, &sources).await?;

    let types = probe_types(cluster, &plan, &search_path).await?;
    let mut coordinator = cluster.coordinator("shoal stream create").await?;
    let tx = coordinator.transaction().await?;
    tx.execute(
        "SELECT set_config('search_path', $1, true)",
        &[&search_path],
    )
    .await?;
    // The storage is named after the catalog id, so the id comes first.
    let stream_id: i32 = tx
        .query_one(
            "SELECT nextval(pg_get_serial_sequence('shoal.stream_table', 'stream_id'))::int",
            &[],
        )
        .await?
        .get(0);
    let storage = storage_table(stream_id);
    for statement in storage_ddl(&plan, &storage, &types)? {
        tx.batch_execute(&statement).await?;
    }
    tx.batch_execute(&view_ddl(&plan, &table, &storage)).await?;
    let relids = tx
        .query_one(
            "SELECT to_regclass($1)::oid, to_regclass($2)::oid",
            &[&table.quoted(), &storage.quoted()],
        )
        .await?;
    let (relid, storage_relid): (u32, u32) = (relids.get(0), relids.get(1));
    tx.execute(
        "INSERT INTO shoal.stream_table (stream_id, relid, storage_relid, query, search_path,
             requested_mode, refresh_mode, mode_reason, schedule_ms, needs_reinit)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true)",
        &[
            &stream_id,
            &relid,
            &storage_relid,
            &plan.query,
            &search_path,
            &options.mode.as_str(),
            &chosen.mode.as_str(),
            &chosen.reason,
            &schedule_ms,
        ],
    )
    .await?;
    let table_ids: BTreeSet<i32> = sources.iter().map(|s| s.table_id).collect();
    for table_id in table_ids {
        tx.execute(
            "INSERT INTO shoal.stream_source (stream_id, table_id) VALUES ($1, $2)",
            &[&stream_id, &table_id],
        )
        .await?;
    }
    tx.commit().await?;
    // Populated at once: a consistent full refresh.
    refresh_stream(cluster, stream_id, true).await?;
    stream_info(cluster.client(), stream_id).await
}

/// Capture needs the old row of every update and delete (`REPLICA IDENTITY FULL` on every
/// shard, recorded so that moved and new shards keep it) and a slot on every node (and on the
/// coordinator for reference tables) created after that.
async fn prepare_capture(
    cluster: &Cluster,
    sources: &[model::DistributedTable],
) -> Result<(), StreamError> {
    let nodes = model::list_nodes(cluster.client()).await?;
    for source in sources {
        cluster
            .client()
            .execute(
                "UPDATE shoal.distributed_table SET original_ddl =
                     jsonb_set(original_ddl, '{replica_identity}', '\"Full\"') WHERE table_id = $1",
                &[&source.table_id],
            )
            .await?;
        if source.kind == TableKind::Reference {
            add_reference_trigger(cluster, source).await?;
            continue;
        }
        for placement in model::placements_of_table(cluster.client(), source.table_id).await? {
            let node = nodes
                .iter()
                .find(|n| n.node_id == placement.node_id)
                .ok_or_else(|| {
                    StreamError::Refused(format!("node {} is not registered", placement.node_id))
                })?;
            let client = cluster.node_client(node, "shoal stream create").await?;
            client
                .batch_execute(&format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL",
                    placement.shard_table.quoted()
                ))
                .await?;
        }
    }
    for node in nodes.iter().filter(|n| n.is_active) {
        capture::ensure_node_slot(cluster, node).await?;
    }
    Ok(())
}

const TRIGGER: &str = "shoal_capture";
const TRUNCATE_TRIGGER: &str = "shoal_capture_truncate";

/// A reference table is written on the coordinator, so its changes are captured there by a
/// trigger, in the writing transaction.
async fn add_reference_trigger(
    cluster: &Cluster,
    source: &model::DistributedTable,
) -> Result<(), StreamError> {
    let exists: bool = cluster
        .client()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
            &[&source.relid, &TRIGGER],
        )
        .await?
        .get(0);
    if exists {
        return Ok(());
    }
    let shard_id: i64 = cluster
        .client()
        .query_one(
            "SELECT shard_id FROM shoal.shard WHERE table_id = $1 LIMIT 1",
            &[&source.table_id],
        )
        .await?
        .get(0);
    let args = format!(
        "{}, {}",
        shoal_sql::quote_literal(&source.table_id.to_string()),
        shoal_sql::quote_literal(&shard_id.to_string())
    );
    let table = source.name.quoted();
    cluster
        .client()
        .batch_execute(&format!(
            "CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW \
             EXECUTE FUNCTION shoal.capture_reference_change({args});\n\
             CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table} FOR EACH STATEMENT \
             EXECUTE FUNCTION shoal.capture_reference_change({args})"
        ))
        .await?;
    Ok(())
}

/// Removes the capture triggers of reference tables no stream table reads any more.
async fn drop_unused_reference_triggers(cluster: &Cluster) -> Result<(), StreamError> {
    let unused = cluster
        .client()
        .query(
            "SELECT t.relid::regclass::text FROM shoal.distributed_table t
             JOIN pg_trigger g ON g.tgrelid = t.relid AND g.tgname = $1
             WHERE t.kind = 'reference'
               AND NOT EXISTS (SELECT 1 FROM shoal.stream_source s WHERE s.table_id = t.table_id)",
            &[&TRIGGER],
        )
        .await?;
    for row in unused {
        let table: String = row.get(0);
        cluster
            .client()
            .batch_execute(&format!(
                "DROP TRIGGER IF EXISTS {TRIGGER} ON {table}; \
                 DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table}"
            ))
            .await?;
    }
    Ok(())
}

async fn probe_types(
    cluster: &Cluster,
    plan: &QueryPlan,
    search_path: &str,
) -> Result<Vec<ColumnType>, StreamError> {
    let mut coordinator = cluster.coordinator("shoal stream create").await?;
    let tx = coordinator.transaction().await?;
    tx.execute(
        "SELECT set_config('search_path', $1, true)",
        &[&search_path],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE shoal_stream_probe ON COMMIT DROP AS {}",
        probe_sql(plan)
    ))
    .await
    .map_err(|e| StreamError::Refused(format!("the query does not run: {}", pg_message(&e))))?;
    let rows = tx
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'shoal_stream_probe'::regclass AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[],
        )
        .await?;
    tx.rollback().await?;
    Ok(rows
        .iter()
        .map(|r| ColumnType::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

pub async fn alter_stream(
    cluster: &Cluster,
    name: &str,
    schedule: Option<Duration>,
    mode: Option<Mode>,
) -> Result<StreamInfo, StreamError> {
    let stream_id = find_stream(cluster.client(), name).await?;
    if let Some(schedule) = schedule {
        let ms = i32::try_from(schedule.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                StreamError::Refused("the schedule must be between 1 ms and 24 days".into())
            })?;
        cluster
            .client()
            .execute(
                "UPDATE shoal.stream_table SET schedule_ms = $2 WHERE stream_id = $1",
                &[&stream_id, &ms],
            )
            .await?;
    }
    if let Some(mode) = mode {
        let mut coordinator = cluster.coordinator("shoal stream alter").await?;
        let tx = coordinator.transaction().await?;
        let (_, plan, _) = load_stream(&tx, stream_id).await?;
        let chosen = choose_mode(&Ok(plan), mode)?;
        tx.execute(
            "UPDATE shoal.stream_table SET requested_mode = $2, refresh_mode = $3, mode_reason = $4,
                    needs_reinit = true WHERE stream_id = $1",
            &[&stream_id, &mode.as_str(), &chosen.mode.as_str(), &chosen.reason],
        )
        .await?;
        tx.commit().await?;
    }
    stream_info(cluster.client(), stream_id).await
}

/// Drops the stream table (its view and its storage) and its catalog rows; the capture slots go
/// with the last one.
pub async fn drop_stream(cluster: &Cluster, name: &str) -> Result<(), StreamError> {
    let stream_id = find_stream(cluster.client(), name).await?;
    let mut coordinator = cluster.coordinator("shoal stream drop").await?;
    let tx = coordinator.transaction().await?;
    let (stream, plan, _) = load_stream(&tx, stream_id).await?;
    tx.execute(
        "DELETE FROM shoal.stream_table WHERE stream_id = $1",
        &[&stream_id],
    )
    .await?;
    tx.execute(
        "DELETE FROM shoal.lease WHERE key = $1",
        &[&stream_key(stream_id)],
    )
    .await?;
    if stream.has_view {
        tx.batch_execute(&format!("DROP VIEW {}", stream.view.quoted()))
            .await?;
    }
    let mut storage = vec![stream.storage.quoted()];
    storage.extend(
        values_tables(&plan, &stream.storage)
            .iter()
            .map(QualifiedName::quoted),
    );
    // IF EXISTS: a storage made before values tables existed may not have them yet.
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", storage.join(", ")))
        .await?;
    tx.commit().await?;
    drop_unused_reference_triggers(cluster).await?;
    let remaining: i64 = cluster
        .client()
        .query_one("SELECT count(*) FROM shoal.stream_table", &[])
        .await?
        .get(0);
    if remaining == 0 {
        let nodes = model::list_nodes(cluster.client()).await?;
        let slots: Vec<i32> = cluster
            .client()
            .query("SELECT node_id FROM shoal.worker_slot", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for node_id in slots {
            let node = nodes.iter().find(|n| n.node_id == node_id);
            capture::forget_node_slot(cluster, node, node_id).await?;
        }
        cluster
            .client()
            .execute("DELETE FROM shoal.change_buffer", &[])
            .await?;
    }
    Ok(())
}

pub async fn list_streams(client: &impl GenericClient) -> Result<Vec<StreamInfo>, StreamError> {
    let ids: Vec<i32> = client
        .query(
            "SELECT stream_id FROM shoal.stream_table ORDER BY stream_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for id in ids {
        out.push(stream_info(client, id).await?);
    }
    Ok(out)
}

async fn stream_info(
    client: &impl GenericClient,
    stream_id: i32,
) -> Result<StreamInfo, StreamError> {
    let row = client
        .query_one(
            "SELECT relid::regclass::text, query, requested_mode, refresh_mode, mode_reason, schedule_ms,
                    needs_reinit, to_char(last_refresh_at, 'YYYY-MM-DD HH24:MI:SS.MS'), last_refresh_ms,
                    last_refresh_mode, last_rows_changed, last_error, storage_relid::regclass::text
             FROM shoal.stream_table WHERE stream_id = $1",
            &[&stream_id],
        )
        .await?;
    let name: String = row.get(0);
    let rows = client
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .ok()
        .and_then(|r| r.get(0));
    Ok(StreamInfo {
        stream_id,
        name,
        query: row.get(1),
        requested_mode: row.get(2),
        refresh_mode: row.get(3),
        mode_reason: row.get(4),
        schedule_ms: row.get(5),
        needs_reinit: row.get(6),
        last_refresh_at: row.get(7),
        last_refresh_ms: row.get(8),
        last_refresh_mode: row.get(9),
        last_rows_changed: row.get(10),
        last_error: row.get(11),
        rows,
        storage: row.get(12),
    })
}
