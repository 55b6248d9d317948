//! The settings that change what a statement returns or how it runs, copied from the
//! client's coordinator session onto every Shoal connection it uses.

use crate::control::Isolation;
use shoal_sql::quote_literal;

/// Settings copied to participants, by name. `search_path` is not among them: statements
/// reach the nodes with every relation qualified.
const COPIED: &[&str] = &[
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "extra_float_digits",
    "bytea_output",
    "client_min_messages",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "standard_conforming_strings",
];

/// Settings of Shoal's own connections while they answer a part of a read split across
/// shards, outside a transaction block. The split already runs several parts on every node at
/// once (about its cores); PostgreSQL's parallel workers on top of each part oversubscribe the
/// node and, with their start-up, made `count(*)` of the reference data set twice as slow
/// (BENCHMARKS.md).
const SPLIT_READ: &[(&str, &str)] = &[("max_parallel_workers_per_gather", "0")];

/// The statement that brings a connection with `applied` settings to `desired`, if any
/// differ: changed values are set, and a setting applied before but not desired now goes back
/// to the value `RESET` would give it (the server's, database's or role's).
pub fn apply_sql(desired: &[(String, String)], applied: &[(String, String)]) -> Option<String> {
    let set = desired
        .iter()
        .filter(|v| !applied.contains(v))
        .map(|(name, value)| {
            format!(
                "pg_catalog.set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(value)
            )
        });
    let reset = applied
        .iter()
        .filter(|(name, _)| !desired.iter().any(|(n, _)| n == name))
        .map(|(name, _)| {
            format!(
                "pg_catalog.set_config({name}, (SELECT reset_val FROM pg_catalog.pg_settings \
                 WHERE name = {name}), false)",
                name = quote_literal(name)
            )
        });
    let changes: Vec<String> = set.chain(reset).collect();
    (!changes.is_empty()).then(|| format!("SELECT {}", changes.join(", ")))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    pub values: Vec<(String, String)>,
}

impl SessionSettings {
    /// Reads the settings and `current_schemas(true)` in one statement.
    pub fn query() -> String {
        let names: Vec<String> = COPIED.iter().map(|n| quote_literal(n)).collect();
        format!(
            "SELECT name, setting FROM pg_catalog.pg_settings WHERE name IN ({}) \
             UNION ALL SELECT '', pg_catalog.array_to_string(pg_catalog.current_schemas(true), \
             pg_catalog.chr(1))",
            names.join(", ")
        )
    }

    /// The settings in `COPIED` order, and the search path.
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> (SessionSettings, Vec<String>) {
        let mut values = Vec::new();
        let mut search_path = Vec::new();
        for name in COPIED {
            if let Some(row) = rows.iter().find(|r| r[0].as_deref() == Some(*name)) {
                values.push((name.to_string(), row[1].clone().unwrap_or_default()));
            }
        }
        if let Some(row) = rows.iter().find(|r| r[0].as_deref() == Some("")) {
            search_path = row[1]
                .as_deref()
                .unwrap_or("")
                .split('\u{1}')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        (SessionSettings { values }, search_path)
    }

    /// The statement that brings a connection with `applied` settings to these, if any differ.
    pub fn apply_sql(&self, applied: &[(String, String)]) -> Option<String> {
        apply_sql(&self.values, applied)
    }

    /// These settings plus those of a read split across shards ([`SPLIT_READ`]).
    pub fn split_read_values(&self) -> Vec<(String, String)> {
        let mut values = self.values.clone();
        values.extend(
            SPLIT_READ
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        );
        values
    }

    pub fn default_isolation(&self) -> Isolation {
        self.values
            .iter()
            .find(|(n, _)| n == "default_transaction_isolation")
            .map_or(Isolation::ReadCommitted, |(_, v)| {
                Isolation::from_setting(v)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_settings_are_applied() {
        let rows = vec![
            vec![Some("TimeZone".into()), Some("UTC".into())],
            vec![Some("DateStyle".into()), Some("ISO, MDY".into())],
            vec![
                Some("default_transaction_isolation".into()),
                Some("repeatable read".into()),
            ],
            vec![Some(String::new()), Some("pg_catalog\u{1}my schema".into())],
        ];
        let (settings, path) = SessionSettings::from_rows(&rows);
        assert_eq!(
            path,
            vec!["pg_catalog".to_string(), "my schema".to_string()]
        );
        assert_eq!(settings.default_isolation(), Isolation::RepeatableRead);
        assert_eq!(settings.values[0], ("DateStyle".into(), "ISO, MDY".into()));
        assert_eq!(settings.apply_sql(&settings.values), None);
        let applied = vec![("DateStyle".to_string(), "ISO, MDY".to_string())];
        let sql = settings.apply_sql(&applied).unwrap();
        assert!(
            sql.contains("set_config('TimeZone', 'UTC', false)"),
            "{sql}"
        );
        assert!(!sql.contains("DateStyle"), "{sql}");
    }

    #[test]
    fn split_read_settings_are_added_then_taken_back() {
        let settings = SessionSettings {
            values: vec![("TimeZone".into(), "UTC".into())],
        };
        let split = settings.split_read_values();
        let sql = apply_sql(&split, &settings.values).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('max_parallel_workers_per_gather', '0', false)"
        );
        assert_eq!(apply_sql(&split, &split), None);
        let back = settings.apply_sql(&split).unwrap();
        assert_eq!(
            back,
            "SELECT pg_catalog.set_config('max_parallel_workers_per_gather', (SELECT reset_val \
             FROM pg_catalog.pg_settings WHERE name = 'max_parallel_workers_per_gather'), false)"
        );
    }
}
