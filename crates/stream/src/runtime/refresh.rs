//! Refreshing a stream table: the window of buffered changes to apply, what must hold still while
//! they are applied, and the statements of a full or differential refresh.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::manage::{Stream, StreamError};
use crate::runtime::capture::{move_reference_changes, poll_all};
use crate::{
    analyze, differential_refresh_sql, full_refresh_sql, plan_for_storage, values_ddl_by_table,
    values_tables, DeltaRelations, QueryPlan, SourceRef,
};
use shoal_cluster::Cluster;
use shoal_sql::QualifiedName;

/// What a refresh must hold still so that the sources' state it reads agrees with the changes it
/// applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barrier {
    /// Nothing: the refresh reads only the change buffer.
    None,
    /// The reference sources' writes wait: a join whose only changed source is the one distributed
    /// table in it reads the reference tables' current state, which (once their pending changes
    /// are in the buffer) is their state at the horizon. Checked after the horizon is known; when
    /// it does not hold, the refresh starts again with [`Barrier::AllSources`].
    ReferenceSources,
    /// Every source's writes wait while every change up to now is captured: a full refresh, a
    /// MIN, MAX, DISTINCT, string_agg or array_agg aggregate or a window partition recomputed
    /// from the sources, an outer join, an `EXISTS` or `IN` subquery, or a join where a
    /// distributed table's current state is read.
    AllSources,
}

/// The barrier a differential refresh of `plan` starts with.
fn initial_barrier(plan: &QueryPlan, has_reference_source: bool) -> Barrier {
    let Some(d) = plan.differential() else {
        return Barrier::AllSources;
    };
    if let Some(u) = &d.union {
        // Projections of single sources read nothing but changes; a branch with a join may
        // read any source.
        return if u
            .branches
            .iter()
            .all(|b| b.differential.sources.len() == 1 && b.differential.semi.is_empty())
        {
            Barrier::None
        } else {
            Barrier::AllSources
        };
    }
    let rescans_extremes = d
        .grouping
        .as_ref()
        .is_some_and(|g| g.aggregates.iter().any(|a| a.func.rescans()));
    // Window partitions are recomputed from the sources. An outer join reads what an inner
    // join reads, and, for a preserved side whose other side changed, that changed side's
    // current state too: [`outer_reads_suffice`] tells, once the changed sources are known.
    // A semi-join reads its relation's current state for every changed row.
    if rescans_extremes || d.window.is_some() || !d.semi.is_empty() {
        Barrier::AllSources
    } else if d.sources.len() > 1 {
        if has_reference_source {
            Barrier::ReferenceSources
        } else {
            Barrier::AllSources
        }
    } else {
        Barrier::None
    }
}

/// Whether a join's delta over the sources `changed` in the window reads only states that hold
/// still under [`Barrier::ReferenceSources`]: each inclusion-exclusion term reads every source
/// outside its subset at its current state, so with two changed sources every source is read,
/// and with one every other source is (with none, nothing is read). `is_reference[i]` tells whether source `i` is a reference
/// table; `reference_changes_after` whether a reference source has buffered changes past the
/// horizon (a held-back horizon), which would make its current state newer than the horizon.
fn references_suffice(
    changed: &[bool],
    is_reference: &[bool],
    reference_changes_after: bool,
) -> bool {
    let changed_count = changed.iter().filter(|c| **c).count();
    if changed_count == 0 {
        return true; // nothing to apply, nothing read
    }
    !reference_changes_after
        && changed_count == 1
        && changed
            .iter()
            .zip(is_reference)
            .all(|(changed, reference)| *changed || *reference)
}

/// Whether an outer join's delta over the sources `changed` reads no changed source's current
/// state, beyond what [`references_suffice`] checks for the inner part: the unmatched rows of
/// a preserved side are probed against the other side's current state when the preserved
/// side changed (that is the other, unchanged source), but when the other side changed the
/// preserved side's rows it reaches are counted in the changed side's current state.
fn outer_reads_suffice(plan: &QueryPlan, changed: &[bool]) -> bool {
    let Some(o) = plan.differential().and_then(|d| d.outer.as_ref()) else {
        return true;
    };
    o.kind
        .preserved()
        .iter()
        .all(|&p| !changed.get(1 - p).copied().unwrap_or(false))
}

#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    pub mode: String,
    pub rows_changed: u64,
    pub ms: f64,
}

/// Refreshes one stream table: differentially from the change buffer, or in full (when asked,
/// when its query needs it, or when the topology changed).
pub async fn refresh_stream(
    cluster: &Cluster,
    stream_id: i32,
    force_full: bool,
) -> Result<RefreshReport, StreamError> {
    let started = Instant::now();
    // The common case of a frequent schedule: nothing new for this stream table. One query,
    // no new connection, no parsing.
    if !force_full {
        let idle: bool = cluster
            .client()
            .query_one(
                "SELECT NOT s.needs_reinit AND s.refresh_mode = 'differential'
                        AND coalesce((SELECT max(seq) FROM shoal.change_buffer), 0) <= s.consumed_seq
                 FROM shoal.stream_table s WHERE s.stream_id = $1",
                &[&stream_id],
            )
            .await?
            .get(0);
        if idle {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            cluster
                .client()
                .execute(
                    "UPDATE shoal.stream_table SET last_refresh_at = now(), last_refresh_ms = $2,
                            last_refresh_mode = 'differential', last_rows_changed = 0, last_error = NULL
                     WHERE stream_id = $1",
                    &[&stream_id, &ms],
                )
                .await?;
            return Ok(RefreshReport {
                mode: "differential".into(),
                rows_changed: 0,
                ms,
            });
        }
    }
    let mut fell_back = false;
    loop {
        let mut coordinator = cluster.pooled_coordinator("shoal stream refresh").await?;
        let tx = coordinator.transaction().await?;
        let (stream, plan, shapes) = load_stream(&tx, stream_id).await?;
        let created_values = create_missing_values_tables(&tx, &plan, &stream.storage).await?;
        let full =
            force_full || stream.needs_reinit || stream.refresh_mode == "full" || created_values;
        let is_reference: Vec<bool> = shapes
            .iter()
            .map(|shape| matches!(shape, SourceShape::Json))
            .collect();
        let barrier = if full || fell_back {
            Barrier::AllSources
        } else {
            initial_barrier(&plan, is_reference.iter().any(|r| *r))
        };
        let reference_ids: Vec<i32> = stream
            .sources
            .iter()
            .zip(&is_reference)
            .filter(|(_, reference)| **reference)
            .map(|((_, _, table_id), _)| *table_id)
            .collect();
        match barrier {
            Barrier::None => {}
            Barrier::ReferenceSources => {
                lock_sources(&tx, &stream, &is_reference, true).await?;
                // Writes to them are blocked now; the ones committed before are moved into the
                // buffer, so their current state is their state at the horizon.
                let pending: bool = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM shoal.reference_change WHERE table_id = ANY ($1))",
                        &[&reference_ids],
                    )
                    .await?
                    .get(0);
                if pending {
                    move_reference_changes(cluster).await?;
                }
            }
            Barrier::AllSources => {
                lock_sources(&tx, &stream, &is_reference, false).await?;
                drain_capture(cluster).await?;
            }
        }
        let table_ids: Vec<i32> = stream.sources.iter().map(|(_, _, id)| *id).collect();
        let Window {
            hi,
            changed,
            reference_changes_after,
        } = buffer_window(&tx, stream.consumed_seq, &table_ids, &reference_ids).await?;
        if barrier == Barrier::ReferenceSources
            && !(references_suffice(&changed, &is_reference, reference_changes_after)
                && outer_reads_suffice(&plan, &changed))
        {
            // Taking the other sources' locks now could deadlock with a writer that holds one
            // of them and waits for a reference table: start again, all locks in order.
            tx.rollback().await?;
            fell_back = true;
            continue;
        }
        let rows_changed = if full {
            // A full refresh's scans can be large enough for JIT compilation to pay.
            tx.batch_execute("SET LOCAL jit TO DEFAULT").await?;
            let mut rows = 0;
            for statement in full_refresh_sql(&plan, &stream.storage) {
                rows += tx.execute(statement.as_str(), &[]).await?;
            }
            rows
        } else {
            let mut deltas = HashMap::new();
            for (((source, _, table_id), changed), shape) in
                stream.sources.iter().zip(&changed).zip(&shapes)
            {
                if *changed {
                    deltas.insert(
                        source.clone(),
                        delta_relations(&stream, source, *table_id, hi, shape),
                    );
                }
            }
            let mut rows = 0;
            for statement in differential_refresh_sql(&plan, &stream.storage, &deltas)? {
                tracing::debug!(%statement, "differential refresh");
                rows += tx.execute(statement.as_str(), &[]).await?;
            }
            rows
        };
        let report = finish_refresh(tx, stream_id, started, full, hi, rows_changed).await?;
        if full {
            // The table was emptied and filled again, and TRUNCATE forgets its statistics:
            // without them the planner merges the next deltas by scanning the whole table
            // instead of looking rows up by their index (54 ms instead of a few at 500,000
            // rows). After the commit, so that readers and writers never wait on it.
            let mut analyzed = vec![stream.storage.quoted()];
            analyzed.extend(
                values_tables(&plan, &stream.storage)
                    .iter()
                    .map(QualifiedName::quoted),
            );
            coordinator
                .batch_execute(&format!("ANALYZE {}", analyzed.join(", ")))
                .await?;
        }
        return Ok(report);
    }
}

/// Creates the values tables (`count(DISTINCT ...)` state) a storage made before they existed
/// lacks; `true` when it did, and the refresh must then be a full one, which fills them.
async fn create_missing_values_tables(
    tx: &Transaction<'_>,
    plan: &QueryPlan,
    storage: &QualifiedName,
) -> Result<bool, StreamError> {
    let wanted = values_ddl_by_table(plan, storage);
    if wanted.is_empty() {
        return Ok(false);
    }
    let names: Vec<String> = wanted.iter().map(|(table, _)| table.quoted()).collect();
    let missing: Vec<bool> = tx
        .query_one(
            "SELECT array_agg(to_regclass(n) IS NULL ORDER BY i)
             FROM unnest($1::text[]) WITH ORDINALITY u(n, i)",
            &[&names],
        )
        .await?
        .get(0);
    let mut created = false;
    for ((_, ddl), missing) in wanted.iter().zip(missing) {
        if missing {
            for statement in ddl {
                tx.batch_execute(statement).await?;
            }
            created = true;
        }
    }
    Ok(created)
}

/// [`analyze`], remembered by query text: a refresh would otherwise parse and deparse its query
/// every time (about a millisecond), while the analysis is pure and a stream's query never
/// changes.
fn analyze_cached(query: &str) -> Result<QueryPlan, StreamError> {
    static PLANS: OnceLock<Mutex<HashMap<String, QueryPlan>>> = OnceLock::new();
    let plans = PLANS.get_or_init(Default::default);
    if let Some(plan) = plans.lock().unwrap_or_else(|e| e.into_inner()).get(query) {
        return Ok(plan.clone());
    }
    let plan = analyze(query)?;
    let mut plans = plans.lock().unwrap_or_else(|e| e.into_inner());
    if plans.len() >= 1024 {
        plans.clear(); // stream tables dropped and created again and again
    }
    plans.insert(query.to_string(), plan.clone());
    Ok(plan)
}

/// Reads a stream table's definition inside a transaction of the caller's (a refresh's, say), in
/// two round trips: the catalog row (setting the transaction's search path to the stream's, so its query's names
/// resolve as they did when it was defined, and turning JIT compilation off: the catalog and
/// delta queries are small, but estimates on a buffer that grows and shrinks can make them look
/// costly enough to compile, which takes longer than running them), then every source with its
/// kind and columns. A stream table of the layout before storage tables is its own storage.
pub(crate) async fn load_stream(
    tx: &Transaction<'_>,
    stream_id: i32,
) -> Result<(Stream, QueryPlan, Vec<SourceShape>), StreamError> {
    let row = tx
        .query_one(
            "SELECT n.nspname::text, c.relname::text, s.query, s.search_path, s.refresh_mode,
                    s.needs_reinit, s.consumed_seq, set_config('search_path', s.search_path, true),
                    set_config('jit', 'off', true), sn.nspname::text, st.relname::text,
                    s.storage_relid IS NOT NULL,
                    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                     WHERE a.attrelid = st.oid AND a.attnum > 0 AND NOT a.attisdropped)
             FROM shoal.stream_table s JOIN pg_class c ON c.oid = s.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_class st ON st.oid = coalesce(s.storage_relid, s.relid)
             JOIN pg_namespace sn ON sn.oid = st.relnamespace WHERE s.stream_id = $1",
            &[&stream_id],
        )
        .await?;
    let stored: Vec<String> = row.get::<_, Option<_>>(12).unwrap_or_default();
    let plan = plan_for_storage(
        analyze_cached(row.get::<_, &str>(2))?,
        &stored,
        row.get::<_, &str>(4) == "full",
    );
    let names: Vec<String> = plan
        .relations
        .iter()
        .map(|relation| match &relation.schema {
            Some(schema) => QualifiedName::new(schema, &relation.name).quoted(),
            None => shoal_sql::quote_ident(&relation.name),
        })
        .collect();
    let resolved = tx
        .query(
            "SELECT c.oid IS NOT NULL, coalesce(ns.nspname::text, ''), coalesce(c.relname::text, ''),
                    t.table_id, t.kind::text, cols.names, cols.types, cols.attnums
             FROM unnest($1::text[]) WITH ORDINALITY u(name, i)
             LEFT JOIN pg_class c ON c.oid = to_regclass(u.name)
             LEFT JOIN pg_namespace ns ON ns.oid = c.relnamespace
             LEFT JOIN shoal.distributed_table t ON t.relid = c.oid
             LEFT JOIN LATERAL (
                 SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names,
                        array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS types,
                        array_agg(a.attnum::int ORDER BY a.attnum) AS attnums
                 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) cols ON true
             ORDER BY u.i",
            &[&names],
        )
        .await?;
    let mut sources = Vec::new();
    let mut shapes = Vec::new();
    for ((relation, text), r) in plan.relations.iter().zip(&names).zip(&resolved) {
        if !r.get::<_, bool>(0) {
            return Err(StreamError::Refused(format!(
                "the query's table {text} does not exist"
            )));
        }
        let name = QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let Some(table_id) = r.get::<_, Option<i32>>(3) else {
            return Err(StreamError::Refused(format!(
                "source {name} is no longer distributed"
            )));
        };
        shapes.push(
            if r.get::<_, Option<String>>(4).as_deref() == Some("reference") {
                SourceShape::Json
            } else {
                let columns: Vec<String> = r.get::<_, Option<_>>(5).unwrap_or_default();
                let types: Vec<String> = r.get::<_, Option<_>>(6).unwrap_or_default();
                let attnums: Vec<i32> = r.get::<_, Option<_>>(7).unwrap_or_default();
                let all: Vec<(String, String, i32)> = columns
                    .into_iter()
                    .zip(types)
                    .zip(attnums)
                    .map(|((name, sql_type), attnum)| (name, sql_type, attnum))
                    .collect();
                SourceShape::Values(used_columns(all, plan.referenced_columns.as_deref()))
            },
        );
        sources.push((relation.clone(), name, table_id));
    }
    let stream = Stream {
        view: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
        storage: QualifiedName::new(row.get::<_, String>(9), row.get::<_, String>(10)),
        has_view: row.get(11),
        refresh_mode: row.get(4),
        needs_reinit: row.get(5),
        consumed_seq: row.get(6),
        sources,
    };
    Ok((stream, plan, shapes))
}

/// Records the refresh and commits it.
async fn finish_refresh(
    tx: Transaction<'_>,
    stream_id: i32,
    started: Instant,
    full: bool,
    hi: i64,
    rows_changed: u64,
) -> Result<RefreshReport, StreamError> {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mode = if full { "full" } else { "differential" };
    tx.execute(
        "UPDATE shoal.stream_table SET consumed_seq = $2, needs_reinit = false, last_refresh_at = now(),
                last_refresh_ms = $3, last_refresh_mode = $4, last_rows_changed = $5, last_error = NULL
         WHERE stream_id = $1",
        &[&stream_id, &hi, &ms, &mode, &(rows_changed as i64)],
    )
    .await?;
    tx.commit().await?;
    Ok(RefreshReport {
        mode: mode.to_string(),
        rows_changed,
        ms,
    })
}

/// The columns of a source a differential refresh reads back from the buffer: those the query
/// names (casting the others would be wasted work: a wide text column costs as much as the rest),
/// or the first one if it names none, so that the relation keeps a column.
fn used_columns(
    all: Vec<(String, String, i32)>,
    referenced: Option<&[String]>,
) -> Vec<(String, String, i32)> {
    let Some(referenced) = referenced else {
        return all;
    };
    let used: Vec<(String, String, i32)> = all
        .iter()
        .filter(|(name, _, _)| referenced.contains(name))
        .cloned()
        .collect();
    if used.is_empty() {
        all.into_iter().take(1).collect()
    } else {
        used
    }
}

/// How a source's buffered rows are read back: worker changes hold each column's text (the
/// type's output) at its attribute number, so each is cast back from its text alone, which is
/// much cheaper than building the whole record; reference tables' rows come from `to_jsonb`
/// (arrays as JSON arrays, for one), so `jsonb_populate_record` reads them.
pub(crate) enum SourceShape {
    /// Name, type (`format_type`) and attribute number of each column.
    Values(Vec<(String, String, i32)>),
    Json,
}

/// The buffer rows the delta SQL reads for one source, inside `(consumed, hi]`; the bounds are
/// numbers of ours, names are quoted, types are PostgreSQL's own `format_type`.
fn delta_relations(
    stream: &Stream,
    source: &SourceRef,
    table_id: i32,
    hi: i64,
    shape: &SourceShape,
) -> DeltaRelations {
    let table = stream
        .sources
        .iter()
        .find(|(s, _, _)| s == source)
        .map(|(_, q, _)| q.quoted())
        .unwrap_or_default();
    let side = |column: &str| {
        let filter = format!(
            "WHERE b.table_id = {table_id} AND b.seq > {} AND b.seq <= {hi} AND b.{column}",
            stream.consumed_seq
        );
        match shape {
            SourceShape::Values(columns) => {
                let list: Vec<String> = columns
                    .iter()
                    .map(|(name, sql_type, attnum)| {
                        format!(
                            "(b.{column}_values[{attnum}])::{sql_type} AS {}",
                            shoal_sql::quote_ident(name)
                        )
                    })
                    .collect();
                format!(
                    "(SELECT {} FROM shoal.change_buffer b {filter}_values IS NOT NULL)",
                    list.join(", ")
                )
            }
            // LATERAL: `(f(x)).*` would call the function once per column.
            SourceShape::Json => format!(
                "(SELECT r.* FROM shoal.change_buffer b \
                 CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, b.{column}_row) r {filter}_row IS NOT NULL)"
            ),
        }
    };
    DeltaRelations {
        deleted_sql: side("old"),
        inserted_sql: side("new"),
    }
}

/// What a refresh applies: the horizon, and which sources have changes up to it.
struct Window {
    /// The highest buffered change to apply: every committed one, except that after a shard move
    /// the target's changes of the moved shards wait until the source's have been captured up to
    /// the cutover (the source's final LSN), so per-key order holds.
    hi: i64,
    /// Per source, in order: whether it has changes in `(consumed, hi]`.
    changed: Vec<bool>,
    /// Whether a reference source has changes past `hi` (a held-back horizon).
    reference_changes_after: bool,
}

/// Reads the refresh's [`Window`] in one round trip.
async fn buffer_window(
    tx: &Transaction<'_>,
    consumed: i64,
    table_ids: &[i32],
    reference_ids: &[i32],
) -> Result<Window, StreamError> {
    let row = tx
        .query_one(
            // The held shards are few and usually none: find them first, then each one's first
            // buffered change, rather than join every unapplied change with the transfers.
            "WITH held AS MATERIALIZED (
                 SELECT t.target_node, ts.shard_id FROM shoal.transfer t
                 JOIN shoal.transfer_shard ts ON ts.operation_id = t.operation_id
                 JOIN shoal.worker_slot w ON w.node_id = t.source_node
                 WHERE t.final_source_lsn IS NOT NULL AND w.frontier < t.final_source_lsn),
             bounds AS MATERIALIZED (
                 SELECT coalesce((SELECT max(seq) FROM shoal.change_buffer), $1) AS top,
                        (SELECT min(first.seq) FROM held CROSS JOIN LATERAL (
                             SELECT min(b.seq) AS seq FROM shoal.change_buffer b
                             WHERE b.seq > $1 AND b.node_id = held.target_node
                               AND b.shard_id = held.shard_id) first) AS first_held),
             horizon AS MATERIALIZED (
                 SELECT CASE WHEN first_held IS NULL THEN top
                             ELSE greatest(least(first_held - 1, top), $1) END AS hi
                 FROM bounds)
             SELECT h.hi,
                    array(SELECT EXISTS (SELECT 1 FROM shoal.change_buffer
                                         WHERE table_id = u.id AND seq > $1 AND seq <= h.hi)
                          FROM unnest($2::int[]) WITH ORDINALITY u(id, i) ORDER BY u.i),
                    EXISTS (SELECT 1 FROM shoal.change_buffer WHERE table_id = ANY ($3) AND seq > h.hi)
             FROM horizon h",
            &[&consumed, &table_ids, &reference_ids],
        )
        .await?;
    Ok(Window {
        hi: row.get(0),
        changed: row.get(1),
        reference_changes_after: row.get(2),
    })
}

/// Blocks writes to the sources (reads go on), or to the reference sources alone, for the rest of
/// the refresh transaction, with a short lock timeout retried, never queueing writers for long.
/// Names are locked in one order, so two refreshes never wait on each other in a cycle.
async fn lock_sources(
    tx: &Transaction<'_>,
    stream: &Stream,
    is_reference: &[bool],
    only_references: bool,
) -> Result<(), StreamError> {
    let mut names: Vec<String> = stream
        .sources
        .iter()
        .zip(is_reference)
        .filter(|(_, reference)| **reference || !only_references)
        .map(|((_, q, _), _)| q.quoted())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    let lock = format!("LOCK TABLE ONLY {} IN SHARE MODE", names.join(", "));
    for attempt in 0..200 {
        tx.batch_execute("SAVEPOINT shoal_lock; SET LOCAL lock_timeout = '50ms'")
            .await?;
        match tx.batch_execute(&lock).await {
            Ok(()) => {
                tx.batch_execute("SET LOCAL lock_timeout = 0; RELEASE SAVEPOINT shoal_lock")
                    .await?;
                return Ok(());
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT shoal_lock").await?;
                tokio::time::sleep(Duration::from_millis(10 * (attempt % 10 + 1))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StreamError::Refused(
        "the sources stayed busy; the refresh will be retried".into(),
    ))
}

/// Captures every change committed so far on every node (writes to the sources are blocked by
/// the caller). A node that cannot be read makes the refresh fail (and be retried), since the
/// state read and the changes applied would not agree.
async fn drain_capture(cluster: &Cluster) -> Result<(), StreamError> {
    for _ in 0..50 {
        let report = poll_all(cluster, 100_000, i32::MAX, true).await?;
        if let Some((node, error)) = report.failed_nodes.first() {
            return Err(StreamError::Capture(format!(
                "node {node} cannot be read: {error}"
            )));
        }
        if report.changes == 0 {
            return Ok(());
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(sql: &str, has_reference_source: bool) -> Barrier {
        initial_barrier(&analyze(sql).expect("a query"), has_reference_source)
    }

    #[test]
    fn a_single_source_without_extremes_needs_no_barrier() {
        assert_eq!(
            barrier("SELECT id, v FROM t WHERE v > 1", false),
            Barrier::None
        );
        assert_eq!(
            barrier("SELECT g, count(*), sum(v) FROM t GROUP BY g", false),
            Barrier::None
        );
    }

    #[test]
    fn extremes_and_joins_of_distributed_tables_hold_every_source() {
        assert_eq!(
            barrier("SELECT g, max(v) FROM t GROUP BY g", false),
            Barrier::AllSources
        );
        assert_eq!(
            barrier(
                "SELECT d.l, min(t.v) FROM t JOIN d ON d.g = t.g GROUP BY d.l",
                true
            ),
            Barrier::AllSources
        );
        assert_eq!(
            barrier("SELECT a.v, b.w FROM a JOIN b ON a.k = b.k", false),
            Barrier::AllSources
        );
        // Distinct sums are recomputed; outer joins probe the changed side too.
        assert_eq!(
            barrier("SELECT g, sum(DISTINCT v) FROM t GROUP BY g", false),
            Barrier::AllSources
        );
        // Distinct counts are kept by their values tables, from the deltas alone.
        assert_eq!(
            barrier("SELECT g, count(DISTINCT v) FROM t GROUP BY g", false),
            Barrier::None
        );
        assert_eq!(
            barrier("SELECT t.v, u.l FROM t LEFT JOIN u ON u.g = t.g", false),
            Barrier::AllSources
        );
        assert_eq!(
            barrier("SELECT v FROM t UNION ALL SELECT w FROM u", false),
            Barrier::None
        );
        assert_eq!(
            barrier(
                "SELECT v FROM t UNION SELECT d.l FROM t JOIN d ON d.g = t.g",
                true
            ),
            Barrier::AllSources
        );
    }

    #[test]
    fn a_join_with_a_reference_table_starts_with_the_references_held() {
        assert_eq!(
            barrier(
                "SELECT d.l, count(*) FROM t JOIN d ON d.g = t.g GROUP BY d.l",
                true
            ),
            Barrier::ReferenceSources
        );
    }

    #[test]
    fn only_the_columns_the_query_names_are_read_back() {
        let column = |name: &str, attnum: i32| (name.to_string(), "integer".to_string(), attnum);
        let all = vec![column("id", 1), column("grp", 2), column("pad", 4)];
        let plan = analyze("SELECT g.grp, count(*) FROM t AS g WHERE g.id > 0 GROUP BY g.grp")
            .expect("a query");
        assert_eq!(
            used_columns(all.clone(), plan.referenced_columns.as_deref()),
            vec![column("id", 1), column("grp", 2)]
        );
        let plan = analyze("SELECT count(*) FROM t").expect("a query");
        assert_eq!(
            used_columns(all.clone(), plan.referenced_columns.as_deref()),
            vec![column("id", 1)]
        );
        // Unicode escapes in identifiers: every column.
        let plan = analyze(r#"SELECT U&"gr\0070", count(*) FROM t GROUP BY 1"#).expect("a query");
        assert_eq!(
            used_columns(all.clone(), plan.referenced_columns.as_deref()),
            all
        );
    }

    #[test]
    fn holding_the_references_suffices_only_when_the_distributed_side_alone_changed() {
        // Sources: a distributed table, then a reference table.
        let kinds = [false, true];
        assert!(references_suffice(&[false, false], &kinds, false));
        assert!(references_suffice(&[true, false], &kinds, false));
        // The reference table changed: the term for its delta reads the distributed table.
        assert!(!references_suffice(&[false, true], &kinds, false));
        assert!(!references_suffice(&[true, true], &kinds, false));
        // A reference change past a held-back horizon: its current state is too new.
        assert!(!references_suffice(&[true, false], &kinds, true));
        // Two distributed tables and a reference table: one changed still reads the other.
        assert!(!references_suffice(
            &[true, false, false],
            &[false, false, true],
            false
        ));
    }

    #[test]
    fn an_outer_join_holds_the_references_when_only_a_preserved_side_changed() {
        let sql = "SELECT t.v, d.l FROM t {} JOIN d ON d.g = t.g";
        let plan = |kind: &str| analyze(&sql.replace("{}", kind)).expect("a query");
        assert_eq!(
            initial_barrier(&plan("LEFT"), true),
            Barrier::ReferenceSources
        );
        // t preserved and alone changed: its rows are probed against d's current state.
        assert!(outer_reads_suffice(&plan("LEFT"), &[true, false]));
        // d preserved (RIGHT, FULL) and t changed: d's rows are counted in t's current state.
        assert!(!outer_reads_suffice(&plan("RIGHT"), &[true, false]));
        assert!(!outer_reads_suffice(&plan("FULL"), &[true, false]));
        // d changed: t's rows it reaches are counted in d's current state.
        assert!(!outer_reads_suffice(&plan("LEFT"), &[false, true]));
        assert!(outer_reads_suffice(&plan("RIGHT"), &[false, true]));
        assert!(outer_reads_suffice(&plan("LEFT"), &[false, false]));
    }
}
