//! Connections to the coordinator and to nodes.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::ClientConfig;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{SslMode, TlsSettings};
use crate::{pg_message, pgpass, CatalogError};

/// Where and as whom to connect. Built from the coordinator's URI; a node's parameters are the
/// coordinator's with the node's host, port and database, so one set of credentials (and one
/// TLS setup) serves all.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    password: Option<String>,
    /// Set when the password came from a password file: another server may have its own line.
    password_file: Option<PathBuf>,
    tls: TlsSettings,
    /// What the servers use when they connect to each other (postgres_fdw, subscriptions).
    server_tls: Vec<(&'static str, String)>,
    /// Built once, on the first connection that needs it.
    tls_config: Arc<OnceLock<Result<Arc<ClientConfig>, String>>>,
}

impl std::fmt::Debug for ConnectParams {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.display())
    }
}

impl ConnectParams {
    /// Parses a libpq URI (`postgresql://user:pass@host:port/db?sslmode=verify-full`) or
    /// key/value string, with libpq's environment defaults (`PGUSER`, `PGPASSWORD`,
    /// `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`) and
    /// `SHOAL_SERVER_SSLMODE` / `SHOAL_SERVER_SSLROOTCERT` for the servers' own connections.
    pub fn parse(uri: &str) -> Result<Self, CatalogError> {
        Self::parse_with_env(uri, &|name| std::env::var(name).ok())
    }

    fn parse_with_env(
        uri: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CatalogError> {
        let (rest, tls_options) = take_tls_options(uri)?;
        let config = Config::from_str(&rest).map_err(|e| CatalogError::BadUri(e.to_string()))?;
        let mut tls = TlsSettings::default();
        for (keyword, variable) in crate::tls::KEYWORDS.iter().zip(ENV_TLS) {
            if let Some(value) = env(variable) {
                tls.set(keyword, &value)?;
            }
        }
        for (keyword, value) in &tls_options {
            tls.set(keyword, value)?;
        }
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
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(|| "postgres".to_string());
        let dbname = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        let mut password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .or_else(|| env("PGPASSWORD"));
        let mut password_file = None;
        if password.is_none() {
            if let Some(path) = pgpass::default_path(env) {
                password = pgpass::read(&path, &host, port, &dbname, &user);
                password_file = Some(path);
            }
        }
        let server_tls = server_tls_options(
            &tls,
            env("SHOAL_SERVER_SSLMODE").as_deref(),
            env("SHOAL_SERVER_SSLROOTCERT"),
        )?;
        Ok(ConnectParams {
            host,
            port,
            dbname,
            user,
            password,
            password_file,
            tls,
            server_tls,
            tls_config: Arc::default(),
        })
    }

    /// The same credentials, another server.
    pub fn with_target(&self, host: &str, port: u16, dbname: &str) -> Self {
        let from_file = self
            .password_file
            .as_deref()
            .and_then(|path| pgpass::read(path, host, port, dbname, &self.user));
        ConnectParams {
            host: host.to_string(),
            port,
            dbname: dbname.to_string(),
            password: from_file.or_else(|| self.password.clone()),
            ..self.clone()
        }
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The libpq TLS options for the servers' connections to each other.
    pub fn server_tls_options(&self) -> &[(&'static str, String)] {
        &self.server_tls
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
        for (keyword, value) in &self.server_tls {
            parts.push(format!("{keyword}={}", libpq_value(value)));
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
            .ssl_mode(self.tls.tokio_mode())
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// The rustls client configuration `sslmode` and the certificate settings ask for.
    pub fn tls_config(&self) -> Result<Arc<ClientConfig>, CatalogError> {
        self.tls_config
            .get_or_init(|| {
                self.tls
                    .client_config()
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(CatalogError::Tls)
    }

    fn connect_error(&self, source: tokio_postgres::Error) -> CatalogError {
        let reason = pg_message(&source);
        let lower = reason.to_lowercase();
        let advice = if lower.contains("password") {
            "give the password in the URI, PGPASSWORD or a password file (~/.pgpass, PGPASSFILE)"
        } else if lower.contains("certificate") || lower.contains("tls") {
            "check sslmode and that sslrootcert holds the CA that signed the server's certificate"
        } else if lower.contains("pg_hba.conf") && self.tls.mode == SslMode::Disable {
            "the server may accept only TLS connections: leave sslmode at prefer or set require"
        } else {
            "check that the server runs and the address is right"
        };
        CatalogError::Connect {
            target: self.display(),
            reason,
            advice,
            source,
        }
    }
}

/// The environment variables libpq reads for [`crate::tls::KEYWORDS`], in the same order.
const ENV_TLS: [&str; 4] = ["PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"];

/// What servers use when they connect to each other. Their files are on the servers, not where
/// Shoal runs, so Shoal's own `sslrootcert` does not carry over: without
/// `SHOAL_SERVER_SSLROOTCERT` (a path on the servers, or `system` on PostgreSQL 16+) the
/// servers encrypt (`require`, when Shoal itself insists on TLS) without verifying.
fn server_tls_options(
    own: &TlsSettings,
    mode: Option<&str>,
    root_cert: Option<String>,
) -> Result<Vec<(&'static str, String)>, CatalogError> {
    let mode = match mode {
        Some(text) => SslMode::parse(text)?,
        None if own.mode == SslMode::Disable || own.mode == SslMode::Prefer => SslMode::Prefer,
        None if root_cert.is_some() => own.mode,
        None => SslMode::Require,
    };
    let mut options = vec![("sslmode", mode.as_str().to_string())];
    match root_cert {
        Some(path) => options.push(("sslrootcert", path)),
        None if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(CatalogError::Tls(format!(
                "SHOAL_SERVER_SSLMODE={} needs SHOAL_SERVER_SSLROOTCERT: the CA file on the \
                 servers, or `system` (PostgreSQL 16+)",
                mode.as_str()
            )))
        }
        None => {}
    }
    Ok(options)
}

/// Splits the TLS keywords out of a URI's query or a key/value string: tokio-postgres knows
/// only some of them, and Shoal handles TLS itself.
fn take_tls_options(uri: &str) -> Result<(String, Vec<(String, String)>), CatalogError> {
    let is_tls = |key: &str| crate::tls::KEYWORDS.contains(&key);
    let mut taken = Vec::new();
    if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        let Some((base, query)) = uri.split_once('?') else {
            return Ok((uri.to_string(), taken));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            if is_tls(&key) {
                taken.push((key, percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, taken));
    }
    let mut kept = String::new();
    let mut chars = uri.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(CatalogError::BadUri(format!("{key} has no value")));
        }
        while chars.peek().is_some_and(|&(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        let quoted = chars.peek().is_some_and(|&(_, c)| c == '\'');
        if quoted {
            chars.next();
        }
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => break,
                c => value.push(c),
            }
        }
        if !closed {
            return Err(CatalogError::BadUri(format!(
                "the value of {key} lacks its closing quote"
            )));
        }
        let end = chars.peek().map_or(uri.len(), |&(i, _)| i);
        if is_tls(&key) {
            taken.push((key, value));
        } else {
            kept.push_str(uri[start..end].trim_end());
            kept.push(' ');
        }
    }
    Ok((kept.trim_end().to_string(), taken))
}

fn percent_decode(text: &str) -> Result<String, CatalogError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| CatalogError::BadUri(format!("bad percent-encoding in {text}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| CatalogError::BadUri(format!("{text} is not UTF-8")))
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
    let config = params.config(application_name);
    let client = if params.tls.mode == SslMode::Disable {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| params.connect_error(e))?;
        spawn_connection(connection);
        client
    } else {
        let tls = MakeRustlsConnect::new((*params.tls_config()?).clone());
        let (client, connection) = config
            .connect(tls)
            .await
            .map_err(|e| params.connect_error(e))?;
        spawn_connection(connection);
        client
    };
    Ok(client)
}

fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection closed with an error");
        }
    });
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
        let params =
            ConnectParams::parse_with_env("postgresql://bob@127.0.0.1:5432/my%20db", &no_env)
                .unwrap();
        assert_eq!(
            params.libpq_string(),
            "host='127.0.0.1' port=5432 dbname='my db' user='bob' sslmode='prefer'"
        );
        let node = params.with_target("10.0.0.2", 5433, "it's");
        assert_eq!(
            node.libpq_string(),
            r"host='10.0.0.2' port=5433 dbname='it\'s' user='bob' sslmode='prefer'"
        );
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn tls_keywords_come_out_of_a_uri() {
        let params = ConnectParams::parse_with_env(
            "postgresql://a@h:5/d?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%201.pem",
            &no_env,
        )
        .unwrap();
        assert_eq!(params.tls().mode, SslMode::VerifyFull);
        assert_eq!(
            params.tls().root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca 1.pem"))
        );
        assert_eq!(params.dbname, "d");
        // The servers encrypt but cannot use a file that is not on them.
        assert_eq!(
            params.server_tls_options(),
            &[("sslmode", "require".to_string())]
        );
    }

    #[test]
    fn tls_keywords_come_out_of_a_key_value_string() {
        let (rest, taken) =
            take_tls_options("host=h sslmode = 'verify-ca' dbname='my \\'db' sslrootcert=/x")
                .unwrap();
        assert_eq!(rest, "host=h dbname='my \\'db'");
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_string(), "verify-ca".to_string()),
                ("sslrootcert".to_string(), "/x".to_string())
            ]
        );
        assert!(take_tls_options("host='h").is_err());
    }

    #[test]
    fn environment_defaults_yield_to_the_uri() {
        let env = |name: &str| match name {
            "PGSSLMODE" => Some("require".to_string()),
            "SHOAL_SERVER_SSLMODE" => Some("verify-full".to_string()),
            "SHOAL_SERVER_SSLROOTCERT" => Some("system".to_string()),
            _ => None,
        };
        let params = ConnectParams::parse_with_env("postgresql://a@h/d", &env).unwrap();
        assert_eq!(params.tls().mode, SslMode::Require);
        assert!(params
            .libpq_string()
            .ends_with("sslmode='verify-full' sslrootcert='system'"));
        let params =
            ConnectParams::parse_with_env("postgresql://a@h/d?sslmode=disable", &env).unwrap();
        assert_eq!(params.tls().mode, SslMode::Disable);
        let missing_root =
            |name: &str| (name == "SHOAL_SERVER_SSLMODE").then(|| "verify-ca".into());
        assert!(ConnectParams::parse_with_env("postgresql://a@h/d", &missing_root).is_err());
    }

    #[test]
    fn passwords_come_from_the_password_file_per_server() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shoal-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "h:5432:d:a:coordinator\nn2:*:*:a:node\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.display().to_string();
        let env = move |name: &str| (name == "PGPASSFILE").then(|| path.clone());
        let params = ConnectParams::parse_with_env("postgresql://a@h/d", &env).unwrap();
        assert_eq!(params.password(), Some("coordinator"));
        assert_eq!(params.with_target("n2", 1, "d").password(), Some("node"));
        assert_eq!(
            params.with_target("n3", 1, "d").password(),
            Some("coordinator")
        );
        // A file others may read is ignored, as libpq ignores it.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let params = ConnectParams::parse_with_env("postgresql://a@h/d", &env).unwrap();
        assert_eq!(params.password(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_garbage() {
        assert!(ConnectParams::parse("postgresql://host:notaport/db").is_err());
    }
}
