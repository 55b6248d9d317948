//! Creating the Shoal database on a freshly started server.

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::error::{LocalError, Result};
use shoal_sql::quote_ident;

/// Checks that `name` can be a database name.
pub fn validate_dbname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(LocalError::InvalidDbName(name.to_string()));
    }
    Ok(())
}

/// Connects as `postgres` to the `postgres` database on 127.0.0.1:`port`.
pub async fn connect_admin(port: u16) -> Result<tokio_postgres::Client> {
    let conninfo =
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10");
    let (client, connection) =
        tokio_postgres::connect(&conninfo, NoTls)
            .await
            .map_err(|source| LocalError::Sql {
                context: format!("could not connect to PostgreSQL on 127.0.0.1:{port}"),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(port, error = %e, "admin connection ended");
        }
    });
    Ok(client)
}

/// Creates database `dbname` on the server at 127.0.0.1:`port` unless it exists.
pub async fn create_database(port: u16, dbname: &str) -> Result<()> {
    validate_dbname(dbname)?;
    let client = connect_admin(port).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await
        .map_err(|source| LocalError::Sql {
            context: format!("could not look up database {dbname:?} on port {port}"),
            source,
        })?
        .is_some();
    if exists {
        return Ok(());
    }
    tracing::info!(port, dbname, "creating database");
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(dbname)))
        .await
    {
        Ok(()) => Ok(()),
        // Someone else created it between the check and now: that is what we wanted.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(source) => Err(LocalError::Sql {
            context: format!("could not create database {dbname:?} on port {port}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(validate_dbname("shoal").is_ok());
        assert!(validate_dbname("").is_err());
        assert!(validate_dbname(&"x".repeat(64)).is_err());
    }
}
