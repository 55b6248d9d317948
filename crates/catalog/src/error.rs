use thiserror::Error;

/// Errors of the catalog layer. Each says what was wrong and what to do next.
#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot connect to {target}: {reason}; {advice}")]
    Connect {
        target: String,
        /// The error with its causes (a TLS handshake failure says why only in its source).
        reason: String,
        advice: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("invalid connection URI: {0}; expected postgresql://USER@HOST:PORT/DBNAME")]
    BadUri(String),
    #[error("the coordinator has no Shoal catalog; run `shoal init` first")]
    NotInitialized,
    #[error(
        "the catalog is at version {catalog} but this shoal binary knows only up to {binary}; \
         use a newer shoal binary"
    )]
    CatalogTooNew { catalog: i32, binary: i32 },
    #[error(
        "the catalog is at version {catalog}, older than this binary's {binary}; \
         run `shoal init` to migrate it"
    )]
    CatalogTooOld { catalog: i32, binary: i32 },
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The server's own words for an error (message, detail and hint), which tokio-postgres's
/// `Display` leaves out.
pub fn pg_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(" (");
                text.push_str(detail);
                text.push(')');
            }
            if let Some(hint) = db.hint() {
                text.push_str("; hint: ");
                text.push_str(hint);
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}
