//! A complete look at a statement's parse tree (through its serialised form, so no node kind is
//! missed): the constructs a shard cannot answer alone, the functions it calls, and how many
//! relations it names.

use serde_json::Value;

use super::NotRoutable;
use crate::topology::Topology;

/// Node kinds that take a statement to the coordinator: subqueries and CTEs (which could read
/// other shards), table functions and samples, SELECT INTO, cursors' WHERE CURRENT OF,
/// DEFAULT in VALUES (shard tables have no defaults), MERGE.
const COORDINATOR_ONLY: [&str; 11] = [
    "SubLink",
    "RangeSubselect",
    "RangeFunction",
    "RangeTableFunc",
    "RangeTableSample",
    "CommonTableExpr",
    "IntoClause",
    "JsonTable",
    "CurrentOfExpr",
    "SetToDefault",
    "MergeStmt",
];

/// Built-in functions whose answer on a node differs from the coordinator's: sequences (they
/// live on the coordinator), advisory locks, transaction ids, session settings, the backend.
const NODE_DIFFERS: [&str; 16] = [
    "nextval",
    "currval",
    "setval",
    "lastval",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock_shared",
    "txid_current",
    "pg_current_xact_id",
    "set_config",
    "current_setting",
    "pg_backend_pid",
    "inet_server_port",
];

/// What the scan counted.
#[derive(Debug, Default)]
pub(super) struct Census {
    /// Relations named in FROM, JOIN, USING and as targets (not in `FOR UPDATE OF`).
    pub relations: usize,
    pub selects: usize,
    pub locking: bool,
}

pub(super) fn scan(statement: &Value, topology: &Topology) -> Result<Census, NotRoutable> {
    let mut census = Census::default();
    walk(statement, topology, &mut census, false)?;
    Ok(census)
}

fn walk(
    value: &Value,
    topology: &Topology,
    census: &mut Census,
    in_locking: bool,
) -> Result<(), NotRoutable> {
    match value {
        Value::Array(items) => {
            for item in items {
                walk(item, topology, census, in_locking)?;
            }
        }
        Value::Object(fields) => {
            // Relations also appear outside node wrappers (an INSERT's or UPDATE's target):
            // known by their fields.
            if fields.contains_key("relname")
                && fields.contains_key("relpersistence")
                && !in_locking
            {
                census.relations += 1;
            }
            for (field, what) in [
                ("into_clause", "SELECT INTO"),
                ("with_clause", "WITH clause"),
            ] {
                if fields.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(NotRoutable(format!("it has a {what}")));
                }
            }
            // A node: {"node": {"Kind": {...}}}.
            let mut in_locking = in_locking;
            if let Some(Value::Object(node)) = fields.get("node") {
                if let Some((kind, body)) = node.iter().next() {
                    if COORDINATOR_ONLY.contains(&kind.as_str()) {
                        return Err(NotRoutable(format!("it has a {kind}")));
                    }
                    match kind.as_str() {
                        "SelectStmt" => census.selects += 1,
                        "LockingClause" => {
                            census.locking = true;
                            in_locking = true;
                        }
                        "FuncCall" => check_function(body, topology)?,
                        _ => {}
                    }
                }
            }
            for field in fields.values() {
                walk(field, topology, census, in_locking)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_function(call: &Value, topology: &Topology) -> Result<(), NotRoutable> {
    let names: Vec<&str> = call["funcname"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node"]["String"]["sval"].as_str())
        .collect();
    let (schema, name) = match names.as_slice() {
        [name] => (None, *name),
        [schema, name] => (Some(*schema), *name),
        _ => return Err(NotRoutable(format!("it calls {}", names.join(".")))),
    };
    let builtin = schema.is_none_or(|s| s == "pg_catalog")
        && topology.builtin_functions.contains(name)
        && !NODE_DIFFERS.contains(&name);
    if builtin {
        Ok(())
    } else {
        Err(NotRoutable(format!(
            "it calls {name}(), which the nodes may not have or answer alike"
        )))
    }
}
