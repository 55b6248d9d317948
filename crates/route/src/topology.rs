//! What the router knows of the cluster: every table the coordinator has, where each lives,
//! and the functions every node has. Loaded by the caller from the catalog (and reloaded when
//! it changes); the router only reads it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::KeyType;
use shoal_sql::QualifiedName;

#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Schemas searched for unqualified names, in order (`pg_temp` first when the session has
    /// temporary tables, as PostgreSQL searches it).
    pub search_path: Vec<String>,
    /// Every table of the coordinator database, managed by Shoal or not (shared by every
    /// session's view, which differ in their search paths).
    pub tables: Arc<HashMap<QualifiedName, Table>>,
    /// Functions the nodes have exactly as the coordinator does (`pg_catalog`'s).
    pub builtin_functions: Arc<HashSet<String>>,
    /// Each node's tables version (its DDL inbox) read before the tables were: what an INSERT
    /// that leaves columns out checks on the node (see `Target::guard`).
    pub node_versions: Arc<HashMap<i32, i64>>,
}

#[derive(Debug, Clone)]
pub struct Table {
    /// Column names in order (for INSERT without a column list).
    pub columns: Vec<String>,
    /// Columns with a default on the coordinator: shard tables have none, so an INSERT sent to
    /// a shard must give them.
    pub with_defaults: Vec<String>,
    pub placement: Placement,
}

#[derive(Debug, Clone)]
pub enum Placement {
    /// Only on the coordinator.
    Local,
    /// Authoritative on the coordinator, a read-only replica on every node under this name.
    Reference {
        replica: QualifiedName,
    },
    Distributed(Distribution),
}

#[derive(Debug, Clone)]
pub struct Distribution {
    /// The distribution column and its type; `None` for a group of one shard, which needs no
    /// key (a distributed schema's tables).
    pub key: Option<(String, KeyType)>,
    pub colocation: i64,
    /// By shard index (the hash partition's remainder).
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone)]
pub struct Shard {
    pub node: i32,
    /// The shard table's name on its node.
    pub table: QualifiedName,
    /// The shard's id, which suffixes the names of its constraints and indexes
    /// (`shoal_sql::derived_name`).
    pub shard_id: i64,
}

impl Topology {
    /// The table a (possibly unqualified) name means, as PostgreSQL resolves it.
    pub fn resolve(&self, schema: &str, name: &str) -> Option<(QualifiedName, &Table)> {
        let candidates: Vec<&str> = if schema.is_empty() {
            self.search_path.iter().map(String::as_str).collect()
        } else {
            vec![schema]
        };
        candidates.into_iter().find_map(|schema| {
            let qualified = QualifiedName::new(schema, name);
            self.tables.get(&qualified).map(|t| (qualified, t))
        })
    }
}
