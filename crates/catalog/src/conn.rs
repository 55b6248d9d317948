//! Connections to the coordinator and to nodes.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::CatalogError;

/// Where and as whom to connect. Built from the coordinator's URI; a node's parameters are the
/// coordinator's with the node's host, port and database, so one set of credentials serves all.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    password: Option<String>,
}

impl std::fmt::Debug for ConnectParams {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.display())
    }
}

impl ConnectParams {
    /// Parses a libpq URI (`postgresql://user:pass@host:port/db`) or key/value string.
    pub fn parse(uri: &str) -> Result<Self, CatalogError> {
        let config = Config::from_str(uri).map_err(|e| CatalogError::BadUri(e.to_string()))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .unwrap_or_else(|| "postgres".to_string());
        let dbname = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .or_else(|| std::env::var("PGPASSWORD").ok());
        Ok(ConnectParams {
            host,
            port,
            dbname,
            user,
            password,
        })
    }

    /// The same credentials, another server.
    pub fn with_target(&self, host: &str, port: u16, dbname: &str) -> Self {
        ConnectParams {
            host: host.to_string(),
            port,
            dbname: dbname.to_string(),
            user: self.user.clone(),
            password: self.password.clone(),
        }
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `host:port/dbname`, for messages and logs (no credentials).
    pub fn display(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname)
    }

    /// A libpq key/value connection string, for subscriptions created on a node.
    pub fn libpq_string(&self) -> String {
        let mut parts = vec![
            format!("host={}", libpq_value(&self.host)),
            format!("port={}", self.port),
            format!("dbname={}", libpq_value(&self.dbname)),
            format!("user={}", libpq_value(&self.user)),
        ];
        if let Some(password) = &self.password {
            parts.push(format!("password={}", libpq_value(password)));
        }
        parts.join(" ")
    }

    fn config(&self, application_name: &str) -> Config {
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&self.user)
            .application_name(application_name)
            // Shoal's own DDL (building and repointing shards) is not DDL to propagate: the
            // coordinator's event triggers leave these sessions alone.
            .options("-c shoal.manage_ddl=off")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }
}

/// Quotes a libpq connection-string value: single quotes, with `\` and `'` escaped.
fn libpq_value(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// Connects and spawns the connection task. `application_name` labels the connection in
/// `pg_stat_activity`, so an operator can see what each Shoal connection is doing.
pub async fn connect(
    params: &ConnectParams,
    application_name: &str,
) -> Result<Client, CatalogError> {
    let (client, connection) = params
        .config(application_name)
        .connect(NoTls)
        .await
        .map_err(|source| CatalogError::Connect {
            target: params.display(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed with an error");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uri_and_keeps_password_out_of_display() {
        let params =
            ConnectParams::parse("postgresql://alice:s3cret@db.example:6432/shop").unwrap();
        assert_eq!(params.host, "db.example");
        assert_eq!(params.port, 6432);
        assert_eq!(params.dbname, "shop");
        assert_eq!(params.user, "alice");
        assert_eq!(params.password(), Some("s3cret"));
        assert!(!format!("{params:?}").contains("s3cret"));
        assert_eq!(params.display(), "db.example:6432/shop");
    }

    #[test]
    fn libpq_string_escapes_values() {
        let params = ConnectParams::parse("postgresql://bob@127.0.0.1:5432/my%20db").unwrap();
        assert_eq!(
            params.libpq_string(),
            "host='127.0.0.1' port=5432 dbname='my db' user='bob'"
        );
        let node = params.with_target("10.0.0.2", 5433, "it's");
        assert_eq!(
            node.libpq_string(),
            r"host='10.0.0.2' port=5433 dbname='it\'s' user='bob'"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(ConnectParams::parse("postgresql://host:notaport/db").is_err());
    }
}
