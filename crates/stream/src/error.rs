use std::fmt;

use serde::{Deserialize, Serialize};

/// A part of a query that differential maintenance cannot handle. The query may still be
/// maintained by full refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsupported {
    /// What is unsupported, as a plural noun phrase ("window functions", "outer joins").
    pub feature: String,
    /// The offending part of the query, deparsed (`row_number() OVER (...)`).
    pub at: Option<String>,
    /// What the user can do instead, if anything.
    pub hint: Option<String>,
}

impl Unsupported {
    pub(crate) fn new(feature: impl Into<String>, at: Option<String>) -> Self {
        Unsupported {
            feature: feature.into(),
            at,
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} are not supported in differential mode", self.feature)?;
        if let Some(at) = &self.at {
            write!(f, " (at `{at}`)")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// Why a query cannot define a stream table, or (for [`AnalyzeError::Unsupported`]) cannot be
/// maintained differentially.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("the query does not parse: {0}")]
    Parse(String),
    #[error("a stream table is defined by exactly one SELECT statement, not {0}")]
    NotASelect(String),
    /// The query parses but cannot define a stream table in any mode.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(Unsupported),
}

impl AnalyzeError {
    /// True when the query can still be maintained by full refresh.
    pub fn allows_full_refresh(&self) -> bool {
        matches!(self, AnalyzeError::Unsupported(_))
    }
}

impl From<Unsupported> for AnalyzeError {
    fn from(u: Unsupported) -> Self {
        AnalyzeError::Unsupported(u)
    }
}

/// Why refresh or storage SQL cannot be generated for a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("differential refresh is impossible for this stream table: {0}")]
    NotDifferential(Unsupported),
    #[error("column types must be given for exactly the columns {expected:?} in that order, got {got:?}")]
    ColumnTypes {
        expected: Vec<String>,
        got: Vec<String>,
    },
    #[error("changes were given for {0}, which the defining query does not read")]
    UnknownSource(String),
}
