use thiserror::Error;

use shoal_catalog::pg_message;

/// Errors of DDL propagation's installation. Each says what was wrong and what to do next.
#[derive(Debug, Error)]
pub enum DdlError {
    #[error("{what}: {message}")]
    Postgres {
        what: String,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} is unreadable ({reason}); run `shoal init` to update the catalog")]
    Unreadable { what: String, reason: String },
    #[error("{0}")]
    Refused(crate::statement::Refusal),
    #[error("{what}: {message}")]
    Catalog { what: String, message: String },
}

/// Attaches what was being done to a PostgreSQL error, keeping the server's own message.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, DdlError>;
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, DdlError> {
        self.map_err(|source| DdlError::Postgres {
            what: what(),
            message: pg_message(&source),
            source,
        })
    }
}
