//! The coordinator's half of distributing and undistributing: rows copied into the new
//! relation, the old one replaced under the same name (its sequences moved over), and the
//! operation settled (committed, or rolled back with what it built on the nodes removed).

use tokio_postgres::Transaction;

use crate::cleanup::{end_operation, run_cleanup};
use crate::error::{ClusterError, PgContext};
use crate::Cluster;
use shoal_ddl::definition::TableDef;
use shoal_sql::{quote_ident, QualifiedName};

/// Ends an operation whose coordinator switch ran in `tx`: commits it if the switch succeeded,
/// else rolls it back and removes what the operation built on the nodes; then releases the
/// operation's lock.
pub(crate) async fn settle<T>(
    cluster: &Cluster,
    operation_id: i64,
    tx: Transaction<'_>,
    result: Result<T, ClusterError>,
    what: &str,
) -> Result<T, ClusterError> {
    let committed = match result {
        Ok(value) => tx
            .commit()
            .await
            .context(|| what.to_string())
            .map(|_| value),
        Err(error) => {
            let _ = tx.rollback().await;
            Err(error)
        }
    };
    let outcome = match committed {
        Ok(value) => Ok(value),
        Err(error) => Err(with_cleanup(cluster, operation_id, error).await),
    };
    end_operation(cluster, operation_id).await;
    outcome
}

/// Runs cleanup for a failed operation and says in the error what could not be removed.
pub(crate) async fn with_cleanup(
    cluster: &Cluster,
    operation_id: i64,
    error: ClusterError,
) -> ClusterError {
    match run_cleanup(cluster, Some(operation_id)).await {
        Ok(report) if report.is_clean() => error,
        Ok(report) => ClusterError::Unsupported(format!(
            "{error}; could not remove {} (run `shoal cleanup` once the node is back)",
            report.failed.join(", ")
        )),
        Err(cleanup_error) => ClusterError::Unsupported(format!(
            "{error}; cleanup failed too ({cleanup_error}): run `shoal cleanup`"
        )),
    }
}

pub(crate) async fn copy_rows(
    tx: &Transaction<'_>,
    from: &QualifiedName,
    to: &QualifiedName,
) -> Result<u64, ClusterError> {
    tx.execute(
        &format!(
            "INSERT INTO {} SELECT * FROM {}",
            to.quoted(),
            from.quoted()
        ),
        &[],
    )
    .await
    .context(|| format!("copying the rows of {from}"))
}

/// Replaces `def`'s table by `replacement` under the same name: sequences owned by its columns
/// move over (dropping the table would drop them), then the old table goes.
pub(crate) async fn replace_table(
    tx: &Transaction<'_>,
    def: &TableDef,
    replacement: &QualifiedName,
) -> Result<(), ClusterError> {
    move_owned_sequences(tx, def.relid, replacement).await?;
    tx.batch_execute(&format!(
        "DROP TABLE {};\nALTER TABLE {} RENAME TO {}",
        def.name.quoted(),
        replacement.quoted(),
        quote_ident(&def.name.name)
    ))
    .await
    .context(|| format!("replacing {}", def.name))
}

pub(crate) async fn move_owned_sequences(
    tx: &Transaction<'_>,
    relid: u32,
    replacement: &QualifiedName,
) -> Result<(), ClusterError> {
    let owned = tx
        .query(
            "SELECT quote_ident(sn.nspname) || '.' || quote_ident(s.relname), a.attname::text
             FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1
               AND d.deptype = 'a'",
            &[&relid],
        )
        .await?;
    for row in owned {
        let sequence: String = row.get(0);
        let column: String = row.get(1);
        tx.batch_execute(&format!(
            "ALTER SEQUENCE {sequence} OWNED BY {}.{}",
            replacement.quoted(),
            quote_ident(&column)
        ))
        .await?;
    }
    Ok(())
}
