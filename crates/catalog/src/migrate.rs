//! Versioned catalog migrations, embedded in the binary.
//!
//! Invariant: the catalog's version only ever moves forward, one migration per transaction, and a
//! binary never touches a catalog newer than the migrations it carries.

use tokio_postgres::Client;

use crate::CatalogError;

/// The migrations, in order. Version `i + 1` is `MIGRATIONS[i]`; never edit a released one, add a
/// new one instead.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "foundation",
        include_str!("../migrations/0001_foundation.sql"),
    ),
    (
        "transfers",
        include_str!("../migrations/0002_transfers.sql"),
    ),
    ("streams", include_str!("../migrations/0003_streams.sql")),
    ("jobs", include_str!("../migrations/0004_jobs.sql")),
    (
        "change values",
        include_str!("../migrations/0005_change_values.sql"),
    ),
    (
        "replication origins",
        include_str!("../migrations/0006_replication_origins.sql"),
    ),
    (
        "ddl propagation",
        include_str!("../migrations/0007_ddl_propagation.sql"),
    ),
    ("endpoint", include_str!("../migrations/0008_endpoint.sql")),
    (
        "stream storage",
        include_str!("../migrations/0009_stream_storage.sql"),
    ),
];

pub const LATEST_VERSION: i32 = MIGRATIONS.len() as i32;

/// Serialises concurrent `shoal init` runs against one coordinator.
const MIGRATION_LOCK_KEY: i64 = 0x5348_4f41_4c00_0001;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub from_version: i32,
    pub to_version: i32,
}

/// Pure: which migrations to apply to go from `current` to the latest version.
pub fn pending(current: i32) -> Result<Vec<(i32, &'static str, &'static str)>, CatalogError> {
    if current > LATEST_VERSION {
        return Err(CatalogError::CatalogTooNew {
            catalog: current,
            binary: LATEST_VERSION,
        });
    }
    Ok(MIGRATIONS
        .iter()
        .enumerate()
        .map(|(i, (name, sql))| (i as i32 + 1, *name, *sql))
        .filter(|(version, _, _)| *version > current)
        .collect())
}

/// Creates or migrates the catalog. Idempotent: on an up-to-date catalog it changes nothing.
pub async fn init(client: &mut Client) -> Result<InitReport, CatalogError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = init_locked(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    result
}

async fn init_locked(client: &mut Client) -> Result<InitReport, CatalogError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS shoal;
             CREATE EXTENSION IF NOT EXISTS postgres_fdw;
             CREATE TABLE IF NOT EXISTS shoal.catalog_version (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 binary_version text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
    let from_version = current_version(client).await?.unwrap_or(0);
    for (version, name, sql) in pending(from_version)? {
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO shoal.catalog_version (version, name, binary_version) VALUES ($1, $2, $3)",
            &[&version, &name, &env!("CARGO_PKG_VERSION")],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied catalog migration");
    }
    Ok(InitReport {
        from_version,
        to_version: LATEST_VERSION.max(from_version),
    })
}

async fn current_version(client: &Client) -> Result<Option<i32>, CatalogError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('shoal.catalog_version') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(version) FROM shoal.catalog_version", &[])
        .await?;
    Ok(row.get::<_, Option<i32>>(0))
}

/// Refuses to work on a catalog this binary does not match: missing, older (run `shoal init`) or
/// newer (this binary is too old and could corrupt it).
pub async fn check_version(client: &Client) -> Result<(), CatalogError> {
    match current_version(client).await? {
        None | Some(0) => Err(CatalogError::NotInitialized),
        Some(v) if v > LATEST_VERSION => Err(CatalogError::CatalogTooNew {
            catalog: v,
            binary: LATEST_VERSION,
        }),
        Some(v) if v < LATEST_VERSION => Err(CatalogError::CatalogTooOld {
            catalog: v,
            binary: LATEST_VERSION,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_catalog_gets_every_migration_in_order() {
        let all = pending(0).unwrap();
        assert_eq!(all.len(), MIGRATIONS.len());
        let versions: Vec<i32> = all.iter().map(|m| m.0).collect();
        let expected: Vec<i32> = (1..=LATEST_VERSION).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn up_to_date_catalog_needs_nothing() {
        assert!(pending(LATEST_VERSION).unwrap().is_empty());
    }

    #[test]
    fn newer_catalog_is_refused() {
        assert!(matches!(
            pending(LATEST_VERSION + 1),
            Err(CatalogError::CatalogTooNew { catalog, binary })
                if catalog == LATEST_VERSION + 1 && binary == LATEST_VERSION
        ));
    }

    #[test]
    fn migrations_only_touch_the_shoal_schema() {
        for (name, sql) in MIGRATIONS {
            let creates = [
                "CREATE TABLE",
                "CREATE VIEW",
                "CREATE SEQUENCE",
                "CREATE FUNCTION",
            ];
            for line in sql
                .lines()
                .filter(|l| creates.iter().any(|c| l.starts_with(c)))
            {
                assert!(
                    line.contains(" shoal."),
                    "migration {name} creates something outside schema shoal: {line}"
                );
            }
        }
    }
}
