//! Typed rows of the catalog tables and the queries over them.
//!
//! Functions take any [`GenericClient`] so callers decide the transaction boundaries: an operation
//! that changes several tables does it in one transaction.

use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

use crate::CatalogError;
use shoal_sql::QualifiedName;

type Result<T> = std::result::Result<T, CatalogError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub is_active: bool,
    pub should_have_shards: bool,
    pub server_version_num: i32,
    /// The postgres_fdw server on the coordinator that reaches this node.
    pub fdw_server: String,
}

impl Node {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Whether new shards may be placed here.
    pub fn accepts_shards(&self) -> bool {
        self.is_active && self.should_have_shards
    }

    fn from_row(row: &Row) -> Node {
        Node {
            node_id: row.get("node_id"),
            host: row.get("host"),
            port: row.get::<_, i32>("port") as u16,
            dbname: row.get("dbname"),
            username: row.get("username"),
            is_active: row.get("is_active"),
            should_have_shards: row.get("should_have_shards"),
            server_version_num: row.get("server_version_num"),
            fdw_server: row.get("fdw_server"),
        }
    }
}

const NODE_COLUMNS: &str = "node_id, host, port, dbname, username, is_active, should_have_shards, \
                            server_version_num, fdw_server";

pub struct NewNode<'a> {
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub username: &'a str,
    pub should_have_shards: bool,
    pub server_version_num: i32,
}

pub async fn insert_node(client: &impl GenericClient, node: &NewNode<'_>) -> Result<Node> {
    let id: i32 = client
        .query_one("SELECT nextval('shoal.node_node_id_seq')::int", &[])
        .await?
        .get(0);
    let fdw_server = format!("shoal_node_{id}");
    let row = client
        .query_one(
            &format!(
                "INSERT INTO shoal.node (node_id, host, port, dbname, username, should_have_shards,
                                         server_version_num, fdw_server)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {NODE_COLUMNS}"
            ),
            &[
                &id,
                &node.host,
                &i32::from(node.port),
                &node.dbname,
                &node.username,
                &node.should_have_shards,
                &node.server_version_num,
                &fdw_server,
            ],
        )
        .await?;
    Ok(Node::from_row(&row))
}

pub async fn list_nodes(client: &impl GenericClient) -> Result<Vec<Node>> {
    let rows = client
        .query(
            &format!("SELECT {NODE_COLUMNS} FROM shoal.node ORDER BY node_id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(Node::from_row).collect())
}

pub async fn get_node(client: &impl GenericClient, node_id: i32) -> Result<Option<Node>> {
    let row = client
        .query_opt(
            &format!("SELECT {NODE_COLUMNS} FROM shoal.node WHERE node_id = $1"),
            &[&node_id],
        )
        .await?;
    Ok(row.as_ref().map(Node::from_row))
}

pub async fn find_node_by_address(
    client: &impl GenericClient,
    host: &str,
    port: u16,
) -> Result<Vec<Node>> {
    let rows = client
        .query(
            &format!("SELECT {NODE_COLUMNS} FROM shoal.node WHERE host = $1 AND port = $2"),
            &[&host, &i32::from(port)],
        )
        .await?;
    Ok(rows.iter().map(Node::from_row).collect())
}

pub async fn set_node_flags(
    client: &impl GenericClient,
    node_id: i32,
    is_active: Option<bool>,
    should_have_shards: Option<bool>,
) -> Result<()> {
    client
        .execute(
            "UPDATE shoal.node SET is_active = coalesce($2, is_active),
                    should_have_shards = coalesce($3, should_have_shards)
             WHERE node_id = $1",
            &[&node_id, &is_active, &should_have_shards],
        )
        .await?;
    Ok(())
}

pub async fn delete_node(client: &impl GenericClient, node_id: i32) -> Result<()> {
    client
        .execute("DELETE FROM shoal.node WHERE node_id = $1", &[&node_id])
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Hash,
    Reference,
    Schema,
}

impl TableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Hash => "hash",
            TableKind::Reference => "reference",
            TableKind::Schema => "schema",
        }
    }

    fn parse(text: &str) -> TableKind {
        match text {
            "hash" => TableKind::Hash,
            "reference" => TableKind::Reference,
            _ => TableKind::Schema,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColocationGroup {
    pub colocation_id: i32,
    pub kind: TableKind,
    pub shard_count: i32,
    pub distribution_type: Option<String>,
    pub is_default: bool,
    pub schema_name: Option<String>,
}

const GROUP_COLUMNS: &str =
    "colocation_id, kind, shard_count, distribution_type, is_default, schema_name";

impl ColocationGroup {
    fn from_row(row: &Row) -> ColocationGroup {
        ColocationGroup {
            colocation_id: row.get("colocation_id"),
            kind: TableKind::parse(row.get("kind")),
            shard_count: row.get("shard_count"),
            distribution_type: row.get("distribution_type"),
            is_default: row.get("is_default"),
            schema_name: row.get("schema_name"),
        }
    }
}

pub async fn get_group(client: &impl GenericClient, colocation_id: i32) -> Result<ColocationGroup> {
    let row = client
        .query_one(
            &format!("SELECT {GROUP_COLUMNS} FROM shoal.colocation_group WHERE colocation_id = $1"),
            &[&colocation_id],
        )
        .await?;
    Ok(ColocationGroup::from_row(&row))
}

pub async fn find_default_group(
    client: &impl GenericClient,
    shard_count: i32,
    distribution_type: &str,
) -> Result<Option<ColocationGroup>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM shoal.colocation_group
                 WHERE is_default AND kind = 'hash' AND shard_count = $1 AND distribution_type = $2"
            ),
            &[&shard_count, &distribution_type],
        )
        .await?;
    Ok(row.as_ref().map(ColocationGroup::from_row))
}

pub async fn find_group_of_kind(
    client: &impl GenericClient,
    kind: TableKind,
    schema_name: Option<&str>,
) -> Result<Option<ColocationGroup>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM shoal.colocation_group
                 WHERE kind = $1 AND schema_name IS NOT DISTINCT FROM $2
                 ORDER BY colocation_id LIMIT 1"
            ),
            &[&kind.as_str(), &schema_name],
        )
        .await?;
    Ok(row.as_ref().map(ColocationGroup::from_row))
}

pub async fn insert_group(
    client: &impl GenericClient,
    kind: TableKind,
    shard_count: i32,
    distribution_type: Option<&str>,
    is_default: bool,
    schema_name: Option<&str>,
) -> Result<ColocationGroup> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO shoal.colocation_group
                     (kind, shard_count, distribution_type, is_default, schema_name)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {GROUP_COLUMNS}"
            ),
            &[
                &kind.as_str(),
                &shard_count,
                &distribution_type,
                &is_default,
                &schema_name,
            ],
        )
        .await?;
    Ok(ColocationGroup::from_row(&row))
}

/// Removes a group no table belongs to any more, so its placement is not reused by accident.
pub async fn delete_group_if_empty(client: &impl GenericClient, colocation_id: i32) -> Result<()> {
    client
        .execute(
            "DELETE FROM shoal.colocation_group g WHERE colocation_id = $1
             AND NOT EXISTS (SELECT 1 FROM shoal.distributed_table t
                             WHERE t.colocation_id = g.colocation_id)",
            &[&colocation_id],
        )
        .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DistributedTable {
    pub table_id: i32,
    pub relid: u32,
    pub name: QualifiedName,
    pub kind: TableKind,
    pub distribution_column: Option<String>,
    pub colocation_id: i32,
    pub shard_count: i32,
}

const TABLE_SELECT: &str = "SELECT t.table_id, t.relid, n.nspname::text AS schema_name,
        c.relname::text AS table_name, t.kind, t.distribution_column, t.colocation_id,
        g.shard_count
    FROM shoal.distributed_table t
    JOIN shoal.colocation_group g USING (colocation_id)
    JOIN pg_catalog.pg_class c ON c.oid = t.relid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

impl DistributedTable {
    fn from_row(row: &Row) -> DistributedTable {
        DistributedTable {
            table_id: row.get("table_id"),
            relid: row.get("relid"),
            name: QualifiedName::new(
                row.get::<_, String>("schema_name"),
                row.get::<_, String>("table_name"),
            ),
            kind: TableKind::parse(row.get("kind")),
            distribution_column: row.get("distribution_column"),
            colocation_id: row.get("colocation_id"),
            shard_count: row.get("shard_count"),
        }
    }
}

pub async fn list_tables(client: &impl GenericClient) -> Result<Vec<DistributedTable>> {
    let rows = client
        .query(
            &format!("{TABLE_SELECT} ORDER BY n.nspname, c.relname"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(DistributedTable::from_row).collect())
}

pub async fn get_table_by_relid(
    client: &impl GenericClient,
    relid: u32,
) -> Result<Option<DistributedTable>> {
    let row = client
        .query_opt(&format!("{TABLE_SELECT} WHERE t.relid = $1"), &[&relid])
        .await?;
    Ok(row.as_ref().map(DistributedTable::from_row))
}

pub async fn tables_in_group(
    client: &impl GenericClient,
    colocation_id: i32,
) -> Result<Vec<DistributedTable>> {
    let rows = client
        .query(
            &format!("{TABLE_SELECT} WHERE t.colocation_id = $1 ORDER BY t.table_id"),
            &[&colocation_id],
        )
        .await?;
    Ok(rows.iter().map(DistributedTable::from_row).collect())
}

pub async fn insert_table(
    client: &impl GenericClient,
    relid: u32,
    kind: TableKind,
    distribution_column: Option<&str>,
    colocation_id: i32,
    original_ddl: &serde_json::Value,
) -> Result<i32> {
    let row = client
        .query_one(
            "INSERT INTO shoal.distributed_table
                 (relid, kind, distribution_column, colocation_id, original_ddl)
             VALUES ($1, $2, $3, $4, $5) RETURNING table_id",
            &[
                &relid,
                &kind.as_str(),
                &distribution_column,
                &colocation_id,
                original_ddl,
            ],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn original_ddl(client: &impl GenericClient, table_id: i32) -> Result<serde_json::Value> {
    let row = client
        .query_one(
            "SELECT original_ddl FROM shoal.distributed_table WHERE table_id = $1",
            &[&table_id],
        )
        .await?;
    Ok(row.get(0))
}

/// Points a table's catalog entry at a new coordinator relation (after the swap that replaces
/// a plain table by its distributed form).
pub async fn set_table_relid(client: &impl GenericClient, table_id: i32, relid: u32) -> Result<()> {
    client
        .execute(
            "UPDATE shoal.distributed_table SET relid = $2 WHERE table_id = $1",
            &[&table_id, &relid],
        )
        .await?;
    Ok(())
}

pub async fn delete_table(client: &impl GenericClient, table_id: i32) -> Result<()> {
    client
        .execute(
            "DELETE FROM shoal.distributed_table WHERE table_id = $1",
            &[&table_id],
        )
        .await?;
    Ok(())
}

/// One shard with its placements, as the coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardPlacement {
    pub shard_id: i64,
    pub table_id: i32,
    pub shard_index: i32,
    /// Name of the shard table on its nodes (and of the coordinator's foreign partition).
    pub shard_table: QualifiedName,
    pub node_id: i32,
    pub size_bytes: Option<i64>,
}

const SHARD_SELECT: &str =
    "SELECT s.shard_id, s.table_id, s.shard_index, s.schema_name, s.shard_name, p.node_id,
            p.size_bytes
     FROM shoal.shard s JOIN shoal.placement p USING (shard_id)";

impl ShardPlacement {
    fn from_row(row: &Row) -> ShardPlacement {
        ShardPlacement {
            shard_id: row.get("shard_id"),
            table_id: row.get("table_id"),
            shard_index: row.get("shard_index"),
            shard_table: QualifiedName::new(
                row.get::<_, String>("schema_name"),
                row.get::<_, String>("shard_name"),
            ),
            node_id: row.get("node_id"),
            size_bytes: row.get("size_bytes"),
        }
    }
}

pub async fn placements_of_table(
    client: &impl GenericClient,
    table_id: i32,
) -> Result<Vec<ShardPlacement>> {
    let rows = client
        .query(
            &format!("{SHARD_SELECT} WHERE s.table_id = $1 ORDER BY s.shard_index, p.node_id"),
            &[&table_id],
        )
        .await?;
    Ok(rows.iter().map(ShardPlacement::from_row).collect())
}

pub async fn all_placements(client: &impl GenericClient) -> Result<Vec<ShardPlacement>> {
    let rows = client
        .query(
            &format!("{SHARD_SELECT} ORDER BY s.table_id, s.shard_index, p.node_id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(ShardPlacement::from_row).collect())
}

pub async fn placements_on_node(
    client: &impl GenericClient,
    node_id: i32,
) -> Result<Vec<ShardPlacement>> {
    let rows = client
        .query(
            &format!("{SHARD_SELECT} WHERE p.node_id = $1 ORDER BY s.table_id, s.shard_index"),
            &[&node_id],
        )
        .await?;
    Ok(rows.iter().map(ShardPlacement::from_row).collect())
}

pub async fn next_shard_id(client: &impl GenericClient) -> Result<i64> {
    Ok(client
        .query_one("SELECT nextval('shoal.shard_id_seq')", &[])
        .await?
        .get(0))
}

pub async fn insert_shard(
    client: &impl GenericClient,
    shard_id: i64,
    table_id: i32,
    shard_index: i32,
    shard_table: &QualifiedName,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO shoal.shard (shard_id, table_id, shard_index, schema_name, shard_name)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &shard_id,
                &table_id,
                &shard_index,
                &shard_table.schema,
                &shard_table.name,
            ],
        )
        .await?;
    Ok(())
}

pub async fn insert_placement(
    client: &impl GenericClient,
    shard_id: i64,
    node_id: i32,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO shoal.placement (shard_id, node_id) VALUES ($1, $2)
             ON CONFLICT (shard_id, node_id) DO NOTHING",
            &[&shard_id, &node_id],
        )
        .await?;
    Ok(())
}

pub async fn delete_placements_on_node(client: &impl GenericClient, node_id: i32) -> Result<()> {
    client
        .execute(
            "DELETE FROM shoal.placement WHERE node_id = $1",
            &[&node_id],
        )
        .await?;
    Ok(())
}

pub async fn record_size(
    client: &impl GenericClient,
    shard_id: i64,
    node_id: i32,
    size_bytes: i64,
) -> Result<()> {
    client
        .execute(
            "UPDATE shoal.placement SET size_bytes = $3, size_measured_at = now()
             WHERE shard_id = $1 AND node_id = $2",
            &[&shard_id, &node_id, &size_bytes],
        )
        .await?;
    Ok(())
}

/// Number of placements of shards (reference tables excluded) per node: the load `table
/// distribute` and `schema distribute` balance by.
pub async fn shard_counts_by_node(client: &impl GenericClient) -> Result<Vec<(i32, i64)>> {
    let rows = client
        .query(
            "SELECT n.node_id, count(p.placement_id) FILTER (WHERE t.kind <> 'reference')
             FROM shoal.node n
             LEFT JOIN shoal.placement p ON p.node_id = n.node_id
             LEFT JOIN shoal.shard s ON s.shard_id = p.shard_id
             LEFT JOIN shoal.distributed_table t ON t.table_id = s.table_id
             GROUP BY n.node_id ORDER BY n.node_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn get_setting(client: &impl GenericClient, key: &str) -> Result<Option<String>> {
    let row = client
        .query_opt("SELECT value FROM shoal.setting WHERE key = $1", &[&key])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn set_setting(client: &impl GenericClient, key: &str, value: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO shoal.setting (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupObject {
    ShardTable,
    Publication,
    Subscription,
    ReplicationSlot,
    /// Origins a copy's writes are tagged with (the name is a `LIKE` pattern).
    ReplicationOrigin,
}

impl CleanupObject {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupObject::ShardTable => "shard_table",
            CleanupObject::Publication => "publication",
            CleanupObject::Subscription => "subscription",
            CleanupObject::ReplicationSlot => "replication_slot",
            CleanupObject::ReplicationOrigin => "replication_origin",
        }
    }

    fn parse(text: &str) -> CleanupObject {
        match text {
            "shard_table" => CleanupObject::ShardTable,
            "publication" => CleanupObject::Publication,
            "subscription" => CleanupObject::Subscription,
            "replication_origin" => CleanupObject::ReplicationOrigin,
            _ => CleanupObject::ReplicationSlot,
        }
    }
}

/// When a recorded object is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Always removed when the operation ends (temporary replication objects).
    Always,
    /// Removed only if the operation fails (what it built for the new placement).
    OnFailure,
    /// Removed after the operation succeeded (the old placement), by the cleanup loop.
    DeferredOnSuccess,
}

impl CleanupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Always => "always",
            CleanupPolicy::OnFailure => "on_failure",
            CleanupPolicy::DeferredOnSuccess => "deferred_on_success",
        }
    }

    fn parse(text: &str) -> CleanupPolicy {
        match text {
            "always" => CleanupPolicy::Always,
            "on_failure" => CleanupPolicy::OnFailure,
            _ => CleanupPolicy::DeferredOnSuccess,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupRecord {
    pub record_id: i64,
    pub operation_id: i64,
    pub object_type: CleanupObject,
    pub schema_name: Option<String>,
    pub object_name: String,
    pub node_id: i32,
    pub policy: CleanupPolicy,
}

pub async fn next_operation_id(client: &impl GenericClient) -> Result<i64> {
    Ok(client
        .query_one("SELECT nextval('shoal.operation_id_seq')", &[])
        .await?
        .get(0))
}

pub async fn insert_cleanup_record(
    client: &impl GenericClient,
    operation_id: i64,
    object_type: CleanupObject,
    schema_name: Option<&str>,
    object_name: &str,
    node_id: i32,
    policy: CleanupPolicy,
) -> Result<i64> {
    let row = client
        .query_one(
            "INSERT INTO shoal.cleanup_record
                 (operation_id, object_type, schema_name, object_name, node_id, policy)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING record_id",
            &[
                &operation_id,
                &object_type.as_str(),
                &schema_name,
                &object_name,
                &node_id,
                &policy.as_str(),
            ],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn list_cleanup_records(client: &impl GenericClient) -> Result<Vec<CleanupRecord>> {
    let rows = client
        .query(
            "SELECT record_id, operation_id, object_type, schema_name, object_name, node_id, policy
             FROM shoal.cleanup_record ORDER BY record_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(cleanup_record_from_row).collect())
}

/// The records of one operation, as they are now.
pub async fn cleanup_records_of(
    client: &impl GenericClient,
    operation_id: i64,
) -> Result<Vec<CleanupRecord>> {
    let rows = client
        .query(
            "SELECT record_id, operation_id, object_type, schema_name, object_name, node_id, policy
             FROM shoal.cleanup_record WHERE operation_id = $1 ORDER BY record_id",
            &[&operation_id],
        )
        .await?;
    Ok(rows.iter().map(cleanup_record_from_row).collect())
}

fn cleanup_record_from_row(r: &Row) -> CleanupRecord {
    CleanupRecord {
        record_id: r.get(0),
        operation_id: r.get(1),
        object_type: CleanupObject::parse(r.get(2)),
        schema_name: r.get(3),
        object_name: r.get(4),
        node_id: r.get(5),
        policy: CleanupPolicy::parse(r.get(6)),
    }
}

pub async fn delete_cleanup_record(client: &impl GenericClient, record_id: i64) -> Result<()> {
    client
        .execute(
            "DELETE FROM shoal.cleanup_record WHERE record_id = $1",
            &[&record_id],
        )
        .await?;
    Ok(())
}

/// Forgets an operation's records of the given policy (its objects are meant to stay).
pub async fn delete_cleanup_records(
    client: &impl GenericClient,
    operation_id: i64,
    policy: CleanupPolicy,
) -> Result<()> {
    client
        .execute(
            "DELETE FROM shoal.cleanup_record WHERE operation_id = $1 AND policy = $2",
            &[&operation_id, &policy.as_str()],
        )
        .await?;
    Ok(())
}
