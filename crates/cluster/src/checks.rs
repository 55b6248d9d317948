//! What a table must satisfy before it is distributed (a refused table changes nothing).

use tokio_postgres::{GenericClient, Transaction};

use crate::error::{ClusterError, PgContext};
use shoal_ddl::definition::{ConstraintKind, TableDef};
use shoal_sql::{quote_ident, QualifiedName};

pub(crate) async fn lock_table(
    tx: &Transaction<'_>,
    table: &QualifiedName,
) -> Result<(), ClusterError> {
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        table.quoted()
    ))
    .await
    .context(|| {
        format!(
            "locking {} (is a long transaction using it? try again when it ends)",
            table
        )
    })
}

pub(crate) fn check_supported_columns(def: &TableDef) -> Result<(), ClusterError> {
    for column in &def.columns {
        if column.identity {
            return Err(ClusterError::Unsupported(format!(
                "column {} of {} is an identity column, which partitioned tables do not support; \
                 use a sequence default (serial) instead",
                quote_ident(&column.name),
                def.name
            )));
        }
        if column.generated {
            return Err(ClusterError::Unsupported(format!(
                "column {} of {} is a generated column, which Shoal does not distribute yet",
                quote_ident(&column.name),
                def.name
            )));
        }
    }
    Ok(())
}

/// Asks PostgreSQL itself whether the type can be a hash partition key, in a savepoint that is
/// rolled back, so domains and array types are judged exactly as PostgreSQL would.
pub(crate) async fn check_hashable(
    tx: &Transaction<'_>,
    column: &str,
    type_sql: &str,
) -> Result<(), ClusterError> {
    tx.batch_execute("SAVEPOINT shoal_hash_probe").await?;
    let probe = tx
        .batch_execute(&format!(
            "CREATE TEMP TABLE shoal_hash_probe (k {type_sql}) PARTITION BY HASH (k)"
        ))
        .await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT shoal_hash_probe")
        .await?;
    probe.map_err(|_| ClusterError::NotHashable {
        column: quote_ident(column),
        type_name: type_sql.to_string(),
    })
}

/// Uniqueness can only be enforced inside one shard, so every unique key must contain the
/// distribution column.
pub(crate) fn check_unique_constraints(def: &TableDef, column: &str) -> Result<(), ClusterError> {
    for constraint in &def.constraints {
        let unique = matches!(
            constraint.kind,
            ConstraintKind::PrimaryKey | ConstraintKind::Unique
        );
        if unique && !constraint.columns.iter().any(|c| c == column) {
            return Err(ClusterError::Unsupported(format!(
                "constraint {} of {} does not include the distribution column {}, so it could not \
                 be enforced across shards; distribute by one of its columns",
                quote_ident(&constraint.name),
                def.name,
                quote_ident(column)
            )));
        }
    }
    for index in def.indexes.iter().filter(|i| i.unique) {
        if !index.key_columns.iter().any(|c| c == column) {
            return Err(ClusterError::Unsupported(format!(
                "unique index {} of {} does not include the distribution column {}; drop it or \
                 distribute by one of its columns",
                quote_ident(&index.name),
                def.name,
                quote_ident(column)
            )));
        }
    }
    Ok(())
}

/// The coordinator table is replaced by a new relation, so nothing may depend on it: no foreign
/// keys from other tables, no views.
///
/// `distributed_with`: tables distributed in the same operation, whose keys may reference it.
pub(crate) async fn check_no_dependents(
    client: &impl GenericClient,
    def: &TableDef,
    distributed_with: &[u32],
) -> Result<(), ClusterError> {
    let referencing = client
        .query(
            "SELECT conname::text, conrelid::regclass::text FROM pg_catalog.pg_constraint
             WHERE confrelid = $1 AND contype = 'f' AND conrelid <> $1
               AND NOT conrelid = ANY ($2)",
            &[&def.relid, &distributed_with],
        )
        .await?;
    if let Some(row) = referencing.first() {
        return Err(ClusterError::Unsupported(format!(
            "{} is referenced by foreign key {} of {}; distribute them together with \
             --with-referencing (colocated, the key kept on the shards) if the key goes through \
             the distribution column, or drop that constraint first",
            def.name,
            quote_ident(row.get::<_, &str>(0)),
            row.get::<_, &str>(1)
        )));
    }
    let views = client
        .query(
            "SELECT DISTINCT v.oid::regclass::text FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
             JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
             WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid = $1
               AND v.oid <> $1",
            &[&def.relid],
        )
        .await?;
    if !views.is_empty() {
        let names: Vec<String> = views.iter().map(|r| r.get(0)).collect();
        return Err(ClusterError::Unsupported(format!(
            "{} is used by view(s) {}; drop them first and create them again afterwards",
            def.name,
            names.join(", ")
        )));
    }
    Ok(())
}
