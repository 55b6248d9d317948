//! `shoal init` on a catalog whose stream tables have the layout before storage tables (the
//! stored rows, one per distinct row with its multiplicity, in a table at the user's name): each
//! becomes a storage table and a view, with its rows, index and refresh state kept.

use serde::Serialize;

use super::manage::StreamError;
use crate::{analyze, plan_for_storage, upgrade_sql, OldTable};
use shoal_cluster::{pg_message, Cluster};
use shoal_sql::QualifiedName;

/// A stream table moved to the current layout.
#[derive(Debug, Clone, Serialize)]
pub struct Upgraded {
    pub name: String,
    pub storage: String,
    /// Views of users that read the old table: they now read the storage (one row per
    /// distinct row, with the hidden columns) and should be created again over the stream table.
    pub dependent_views: Vec<String>,
}

/// Moves every stream table of the old layout, each in its own transaction. One that cannot be
/// moved keeps working as it was (refreshes read either layout); the error names it.
pub async fn upgrade_layouts(cluster: &Cluster) -> Result<Vec<Upgraded>, StreamError> {
    let ids: Vec<i32> = cluster
        .client()
        .query(
            "SELECT stream_id FROM shoal.stream_table WHERE storage_relid IS NULL ORDER BY stream_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for stream_id in ids {
        match upgrade_one(cluster, stream_id).await {
            Ok(Some(upgraded)) => done.push(upgraded),
            Ok(None) => {}
            Err(error) => failed.push(format!("stream table {stream_id}: {error}")),
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(StreamError::Refused(format!(
            "{} (they keep working as they were; run `shoal init` again, as the stream tables' \
             owner or a superuser, once the cause is fixed)",
            failed.join("; ")
        )))
    }
}

async fn upgrade_one(cluster: &Cluster, stream_id: i32) -> Result<Option<Upgraded>, StreamError> {
    let mut coordinator = cluster.coordinator("shoal init").await?;
    let tx = coordinator.transaction().await?;
    // The row lock makes a concurrent `shoal init` wait, then find nothing left to do.
    let Some(row) = tx
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, s.query, pg_get_userbyid(c.relowner)::text,
                    array(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL
                                               ELSE pg_get_userbyid(a.grantee)::text END
                          FROM aclexplode(c.relacl) a
                          WHERE a.privilege_type = 'SELECT' AND a.grantee <> c.relowner),
                    array(SELECT DISTINCT v.oid::regclass::text FROM pg_depend d
                          JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
                          WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = c.oid
                            AND v.oid <> c.oid ORDER BY 1),
                    s.refresh_mode = 'full',
                    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
             FROM shoal.stream_table s JOIN pg_class c ON c.oid = s.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE s.stream_id = $1 AND s.storage_relid IS NULL
             FOR UPDATE OF s",
            &[&stream_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let old = OldTable {
        name: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
        owner: row.get(3),
        readers: row.get(4),
    };
    // The view must show the rows as the table holds them, whatever the query is today.
    let stored: Vec<String> = row.get::<_, Option<_>>(7).unwrap_or_default();
    let plan = plan_for_storage(analyze(row.get::<_, &str>(2))?, &stored, row.get(6));
    for statement in upgrade_sql(&plan, stream_id, &old) {
        tx.batch_execute(&statement).await.map_err(|e| {
            StreamError::Refused(format!("moving {}: {}", old.name, pg_message(&e)))
        })?;
    }
    let storage = crate::storage_table(stream_id);
    tx.execute(
        "UPDATE shoal.stream_table SET relid = to_regclass($2)::oid, storage_relid = relid
         WHERE stream_id = $1",
        &[&stream_id, &old.name.quoted()],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(stream_id, name = %old.name, storage = %storage, "stream table moved to a storage table and a view");
    Ok(Some(Upgraded {
        name: old.name.to_string(),
        storage: storage.to_string(),
        dependent_views: row.get(5),
    }))
}
