//! Statements on distributed tables that the coordinator runs otherwise than one PostgreSQL
//! server would run them on a plain table, or refuses with words that point the wrong way,
//! because each shard is a postgres_fdw foreign table there:
//!
//! - `INSERT ... ON CONFLICT (...)` or `ON CONFLICT ON CONSTRAINT`: the coordinator's table
//!   has no unique index to infer (the shards have them, and a partitioned table cannot have
//!   one over foreign partitions), so it answers "there is no unique or exclusion constraint
//!   matching the ON CONFLICT specification" to a table that has one;
//! - `FOR UPDATE/SHARE SKIP LOCKED` or `NOWAIT`: postgres_fdw sends the row lock to the node
//!   without them, so the statement waits for locked rows instead of skipping them or
//!   failing at once;
//! - `MERGE` into a distributed table: refused as a statement on a foreign table, naming a
//!   shard.
//!
//! An endpoint session that would pass such a statement to the coordinator refuses it with
//! these explanations instead (nothing has run). Pure.

use serde_json::Value;

use crate::topology::{Placement, Topology};
use shoal_sql::quote_literal;

/// Why a statement cannot go to the coordinator, in PostgreSQL's error fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub message: String,
    pub hint: String,
}

impl Difference {
    /// A statement that fails on the coordinator with this error (SQLSTATE 0A000), as the
    /// coordinator session's own error: it ends the session's transaction block as any error
    /// there would.
    pub fn raise_sql(&self) -> String {
        let body = format!(
            "BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = {}, \
             HINT = {}; END",
            quote_literal(&self.message),
            quote_literal(&self.hint)
        );
        // A dollar-quote tag the body does not contain.
        let mut tag = String::from("shoal");
        while body.contains(&format!("${tag}$")) {
            tag.push('_');
        }
        format!("DO ${tag}${body}${tag}$")
    }
}

/// Words one of the statements above cannot be written without.
const KEYWORDS: [&str; 4] = ["conflict", "skip", "nowait", "merge"];

/// `LockWaitPolicy::LockWaitBlock` in libpg_query's protobuf: waiting, as a plain `FOR UPDATE`.
const LOCK_WAIT_BLOCK: i64 = 1;

/// What would go wrong if `sql` ran on the coordinator, if it touches a distributed table in a
/// way the coordinator gets wrong.
pub fn coordinator_differs(sql: &str, topology: &Topology) -> Option<Difference> {
    // Every statement the endpoint passes to the coordinator comes here: one without the
    // words these constructs need is not parsed again.
    let lower = sql.to_ascii_lowercase();
    if !KEYWORDS.iter().any(|k| lower.contains(k)) {
        return None;
    }
    let parsed = pg_query::parse(sql, 0).ok()?;
    let tree = serde_json::to_value(&parsed.protobuf).ok()?;
    let mut found = None;
    walk(&tree, topology, &mut found);
    found
}

fn walk(value: &Value, topology: &Topology, found: &mut Option<Difference>) {
    if found.is_some() {
        return;
    }
    match value {
        Value::Array(items) => items.iter().for_each(|v| walk(v, topology, found)),
        Value::Object(fields) => {
            if let Some(Value::Object(node)) = fields.get("node") {
                if let Some((kind, body)) = node.iter().next() {
                    *found = check(kind, body, topology);
                    if found.is_some() {
                        return;
                    }
                }
            }
            fields.values().for_each(|v| walk(v, topology, found));
        }
        _ => {}
    }
}

fn check(kind: &str, body: &Value, topology: &Topology) -> Option<Difference> {
    match kind {
        "InsertStmt" => {
            let table = distributed(&body["relation"], topology)?;
            let infer = &body["on_conflict_clause"]["infer"];
            let has_target = infer["index_elems"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
                || infer["conname"].as_str().is_some_and(|n| !n.is_empty());
            has_target.then(|| Difference {
                message: format!(
                    "INSERT ... ON CONFLICT with a conflict target on the distributed table \
                     {table} must write rows of one shard group"
                ),
                hint: "The coordinator cannot see the shards' unique constraints: send the rows \
                       of each distribution column value in their own INSERT, or use ON \
                       CONFLICT DO NOTHING without a conflict target."
                    .into(),
            })
        }
        "SelectStmt" => {
            let skips = body["locking_clause"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["node"]["LockingClause"]["wait_policy"].as_i64())
                .any(|policy| policy > LOCK_WAIT_BLOCK);
            if !skips {
                return None;
            }
            let table = first_distributed(&body["from_clause"], topology)?;
            Some(Difference {
                message: format!(
                    "SKIP LOCKED and NOWAIT on rows of several shards of the distributed table \
                     {table} would wait for locked rows through the coordinator"
                ),
                hint: "Filter on the distribution column (WHERE its value is one constant or \
                       parameter) so the statement runs on its shard, where SKIP LOCKED and \
                       NOWAIT work as on one server."
                    .into(),
            })
        }
        "MergeStmt" => {
            let table = distributed(&body["relation"], topology)?;
            Some(Difference {
                message: format!("MERGE into the distributed table {table} is not supported"),
                hint: "Use INSERT ... ON CONFLICT (one shard group per statement), UPDATE and \
                       DELETE."
                    .into(),
            })
        }
        _ => None,
    }
}

/// The name of the distributed table `range` (a RangeVar) names, if it is one.
fn distributed(range: &Value, topology: &Topology) -> Option<String> {
    let schema = range["schemaname"].as_str().unwrap_or("");
    let name = range["relname"].as_str()?;
    let (qualified, table) = topology.resolve(schema, name)?;
    matches!(table.placement, Placement::Distributed(_)).then(|| qualified.to_string())
}

/// The first distributed table named anywhere in `from` (FROM items, joins included).
fn first_distributed(from: &Value, topology: &Topology) -> Option<String> {
    match from {
        Value::Array(items) => items.iter().find_map(|v| first_distributed(v, topology)),
        Value::Object(fields) => {
            if fields.contains_key("relname") && fields.contains_key("relpersistence") {
                if let Some(name) = distributed(from, topology) {
                    return Some(name);
                }
            }
            fields.values().find_map(|v| first_distributed(v, topology))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::topology::{Distribution, Shard, Table};
    use crate::KeyType;
    use shoal_sql::QualifiedName;

    fn topology() -> Topology {
        let name = |t: &str| QualifiedName::new("public", t);
        let table = |placement| Table {
            columns: vec!["id".into(), "v".into()],
            with_defaults: Vec::new(),
            placement,
        };
        let tables: HashMap<QualifiedName, Table> = [
            (
                name("Order Items"),
                table(Placement::Distributed(Distribution {
                    key: Some(("id".into(), KeyType::Int8)),
                    colocation: 1,
                    shards: vec![Shard {
                        node: 1,
                        table: name("Order Items_100"),
                        shard_id: 100,
                    }],
                })),
            ),
            (name("jobs"), table(Placement::Local)),
        ]
        .into_iter()
        .collect();
        Topology {
            tables: std::sync::Arc::new(tables),
            search_path: vec!["public".into()],
            ..Topology::default()
        }
    }

    fn differs(sql: &str) -> Option<String> {
        coordinator_differs(sql, &topology()).map(|d| d.message)
    }

    #[test]
    fn conflict_targets_on_distributed_tables_are_explained() {
        let upsert = differs(
            r#"INSERT INTO "Order Items" VALUES (1, 'a'), (2, 'b')
               ON CONFLICT (id) DO UPDATE SET v = excluded.v"#,
        )
        .unwrap();
        assert!(upsert.contains(r#"public."Order Items""#), "{upsert}");
        assert!(upsert.contains("one shard group"), "{upsert}");
        assert!(differs(
            r#"INSERT INTO public."Order Items" SELECT 1, 'a' ON CONFLICT ON CONSTRAINT k DO NOTHING"#
        )
        .is_some());
        // Without a target postgres_fdw does it; a plain table is the coordinator's own.
        assert_eq!(
            differs(r#"INSERT INTO "Order Items" VALUES (1, 'a') ON CONFLICT DO NOTHING"#),
            None
        );
        assert_eq!(
            differs("INSERT INTO jobs VALUES (1, 'a') ON CONFLICT (id) DO NOTHING"),
            None
        );
        assert_eq!(
            differs(r#"INSERT INTO "Order Items" VALUES (1, 'a')"#),
            None
        );
    }

    #[test]
    fn skip_locked_and_nowait_over_distributed_tables_are_explained() {
        assert!(differs(
            r#"SELECT * FROM "Order Items" WHERE v = 'q' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"#
        )
        .unwrap()
        .contains("SKIP LOCKED"));
        // Inside an UPDATE, as job queues write it.
        assert!(differs(
            r#"UPDATE "Order Items" SET v = 'run' WHERE id = (SELECT id FROM "Order Items"
               WHERE v = 'q' LIMIT 1 FOR UPDATE NOWAIT)"#
        )
        .is_some());
        assert_eq!(
            differs(r#"SELECT * FROM "Order Items" WHERE v = 'q' FOR UPDATE"#),
            None
        );
        assert_eq!(
            differs("SELECT * FROM jobs LIMIT 1 FOR UPDATE SKIP LOCKED"),
            None
        );
    }

    #[test]
    fn merge_into_a_distributed_table_is_explained() {
        assert!(differs(
            r#"MERGE INTO "Order Items" t USING jobs s ON t.id = s.id
               WHEN MATCHED THEN UPDATE SET v = s.v"#
        )
        .is_some());
        assert_eq!(
            differs(
                r#"MERGE INTO jobs t USING "Order Items" s ON t.id = s.id
                   WHEN MATCHED THEN UPDATE SET v = s.v"#
            ),
            None
        );
        assert_eq!(differs("not sql at all"), None);
    }

    #[test]
    fn the_refusal_is_one_do_block_whatever_the_names_hold() {
        let difference = Difference {
            message: "table \"a$shoal$b\" isn't".into(),
            hint: "h".into(),
        };
        let sql = difference.raise_sql();
        assert!(sql.starts_with("DO $shoal_$BEGIN RAISE EXCEPTION"), "{sql}");
        assert!(
            sql.contains("MESSAGE = 'table \"a$shoal$b\" isn''t'"),
            "{sql}"
        );
        assert!(sql.ends_with("END$shoal_$"), "{sql}");
        assert_eq!(
            pg_query::parse(&sql, 0)
                .map(|p| p.protobuf.stmts.len())
                .ok(),
            Some(1)
        );
    }
}
