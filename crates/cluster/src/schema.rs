//! Distributed schemas: every table of the schema lives, whole, on one node, and all of them
//! together form one shard group that moves as a unit. On the coordinator each table becomes a
//! single foreign table.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::Transaction;

use crate::checks::{check_hashable, check_supported_columns};
use crate::cleanup::begin_operation;
use crate::error::{ClusterError, PgContext};
use crate::layout;
use crate::placement::least_loaded;
use crate::resolve::resolve_schema;
use crate::switch::{copy_rows, move_owned_sequences, settle};
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy, Node, TableKind};
use shoal_ddl::definition::{
    foreign_key_ddl, introspect, shard_table_ddl, ConstraintKind, TableDef,
};
use shoal_sql::{derived_name, quote_ident, QualifiedName};

#[derive(Debug, Clone, Serialize)]
pub struct SchemaReport {
    pub schema: String,
    pub colocation_id: i32,
    pub node_id: i32,
    pub node_address: String,
    /// Tables distributed by this call.
    pub tables: Vec<QualifiedName>,
    pub rows_moved: u64,
}

/// Makes every table of a schema a single-shard table, all placed together on the node with the
/// fewest shards.
pub async fn distribute_schema(
    cluster: &Cluster,
    schema: &str,
) -> Result<SchemaReport, ClusterError> {
    place_schema_tables(cluster, schema, false).await
}

/// Adds the tables created in a distributed schema since it was distributed (or last synced).
pub async fn sync_schema(cluster: &Cluster, schema: &str) -> Result<SchemaReport, ClusterError> {
    place_schema_tables(cluster, schema, true).await
}

async fn place_schema_tables(
    cluster: &Cluster,
    schema_text: &str,
    sync: bool,
) -> Result<SchemaReport, ClusterError> {
    let label = format!(
        "shoal schema {} {schema_text}",
        if sync { "sync" } else { "distribute" }
    );
    let mut coordinator = cluster.coordinator(&label).await?;
    let tx = coordinator.transaction().await?;
    let (schema_oid, schema) = resolve_schema(&tx, schema_text).await?;
    let group = model::find_group_of_kind(&tx, TableKind::Schema, Some(&schema)).await?;
    match (&group, sync) {
        (Some(_), false) => {
            return Err(ClusterError::SchemaAlreadyDistributed(quote_ident(&schema)))
        }
        (None, true) => return Err(ClusterError::SchemaNotDistributed(quote_ident(&schema))),
        _ => {}
    }
    if schema == "public"
        || schema == "shoal"
        || schema.starts_with("pg_")
        || schema == "information_schema"
    {
        return Err(ClusterError::Unsupported(format!(
            "schema {schema} cannot be distributed; distribute a schema of your own"
        )));
    }
    let tables = tx
        .query(
            "SELECT c.oid, c.relkind::text, c.relname::text FROM pg_catalog.pg_class c
             WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'p')
               AND NOT EXISTS (SELECT 1 FROM shoal.distributed_table t WHERE t.relid = c.oid)
             ORDER BY c.oid",
            &[&schema_oid],
        )
        .await?;
    let mut defs = Vec::new();
    for row in &tables {
        let relkind: String = row.get(1);
        if relkind != "r" {
            return Err(ClusterError::Unsupported(format!(
                "{} is a partitioned table, which distributed schemas do not support yet",
                QualifiedName::new(&schema, row.get::<_, String>(2))
            )));
        }
        let name = QualifiedName::new(&schema, row.get::<_, String>(2));
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '10s'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            name.quoted()
        ))
        .await
        .context(|| format!("locking {name} (is a long transaction using it?)"))?;
        defs.push(introspect(&tx, row.get(0)).await?);
    }
    for def in &defs {
        check_supported_columns(def)?;
    }
    check_schema_dependents(&tx, &defs).await?;

    let nodes = model::list_nodes(&tx).await?;
    let existing_tables = match &group {
        Some(g) => model::tables_in_group(&tx, g.colocation_id).await?,
        None => Vec::new(),
    };
    let mut existing_shards: HashMap<u32, QualifiedName> = HashMap::new();
    let mut group_node = None;
    for table in &existing_tables {
        for placement in model::placements_of_table(&tx, table.table_id).await? {
            group_node = Some(placement.node_id);
            existing_shards.insert(table.relid, placement.shard_table);
        }
    }
    let node_id = match group_node {
        Some(id) => id,
        None => {
            let candidates: Vec<i32> = nodes
                .iter()
                .filter(|n| n.accepts_shards())
                .map(|n| n.node_id)
                .collect();
            let load: BTreeMap<i32, i64> = model::shard_counts_by_node(&tx)
                .await?
                .into_iter()
                .collect();
            least_loaded(&candidates, &load).ok_or(ClusterError::NoNodes)?
        }
    };
    let node = nodes
        .iter()
        .find(|n| n.node_id == node_id)
        .cloned()
        .ok_or(ClusterError::NoNodes)?;

    // Plan every shard (and where each foreign key points) before creating anything.
    let mut shards: Vec<(i64, QualifiedName)> = Vec::new();
    for def in &defs {
        let shard_id = model::next_shard_id(cluster.client()).await?;
        shards.push((
            shard_id,
            QualifiedName::new(&schema, derived_name(&def.name.name, &shard_id.to_string())),
        ));
    }
    let mut shard_of: HashMap<u32, QualifiedName> = existing_shards;
    for (def, (_, shard)) in defs.iter().zip(&shards) {
        shard_of.insert(def.relid, shard.clone());
    }
    let mut fk_ddl = Vec::new();
    for (def, (shard_id, shard)) in defs.iter().zip(&shards) {
        for (constraint, fk) in def.foreign_keys() {
            let referenced = match shard_of.get(&fk.referenced_relid) {
                Some(target) => target.clone(),
                None => match model::get_table_by_relid(&tx, fk.referenced_relid).await? {
                    Some(t) if t.kind == TableKind::Reference => t.name.clone(),
                    _ => {
                        return Err(ClusterError::Unsupported(format!(
                            "foreign key {} of {} references {}, which is neither in schema {} nor a reference table; drop the constraint or make {} a reference table first",
                            quote_ident(&constraint.name), def.name, fk.referenced, quote_ident(&schema), fk.referenced
                        )))
                    }
                },
            };
            fk_ddl.push(foreign_key_ddl(
                shard,
                constraint,
                fk,
                &referenced,
                Some(*shard_id),
            ));
        }
    }

    let operation_id = begin_operation(cluster).await?;
    let result = async {
        let client = cluster.node_client(&node, &label).await?;
        for (_, shard) in &shards {
            model::insert_cleanup_record(
                cluster.client(),
                operation_id,
                CleanupObject::ShardTable,
                Some(&shard.schema),
                &shard.name,
                node.node_id,
                CleanupPolicy::OnFailure,
            )
            .await?;
        }
        let mut ddl = vec!["BEGIN".to_string()];
        for (def, (shard_id, shard)) in defs.iter().zip(&shards) {
            ddl.extend(shard_table_ddl(def, shard, Some(*shard_id)));
        }
        ddl.extend(fk_ddl.iter().cloned());
        ddl.push("COMMIT".to_string());
        client.batch_execute(&ddl.join(";\n")).await.context(|| {
            format!(
                "creating the tables of schema {schema} on node {}",
                node.address()
            )
        })?;

        let rows = switch_to_foreign_tables(&tx, &defs, &shards, &node).await?;
        let group = match &group {
            Some(g) => g.clone(),
            None => {
                model::insert_group(&tx, TableKind::Schema, 1, None, false, Some(&schema)).await?
            }
        };
        for (def, (shard_id, shard)) in defs.iter().zip(&shards) {
            let relid: u32 = tx
                .query_one("SELECT to_regclass($1)::oid", &[&def.name.quoted()])
                .await?
                .get(0);
            let table_id = model::insert_table(
                &tx,
                relid,
                TableKind::Schema,
                None,
                group.colocation_id,
                &serde_json::to_value(def.numbered_as_copy()).expect("table definitions serialise"),
            )
            .await?;
            model::insert_shard(&tx, *shard_id, table_id, 0, shard).await?;
            model::insert_placement(&tx, *shard_id, node.node_id).await?;
        }
        model::delete_cleanup_records(&tx, operation_id, CleanupPolicy::OnFailure).await?;
        Ok::<_, ClusterError>((rows, group.colocation_id))
    }
    .await;
    let what = format!("distributing schema {schema}");
    let (rows_moved, colocation_id) = settle(cluster, operation_id, tx, result, &what).await?;
    if !defs.is_empty() {
        let names = defs.iter().map(|d| d.name.clone()).collect();
        crate::statistics::refresh::refresh_after_distributing(cluster, names).await;
    }
    Ok(SchemaReport {
        schema,
        colocation_id,
        node_id: node.node_id,
        node_address: node.address(),
        tables: defs.iter().map(|d| d.name.clone()).collect(),
        rows_moved,
    })
}

/// Foreign keys between the schema's own tables are fine (they are dropped with the tables and
/// recreated on the node); anything else that depends on them is not.
async fn check_schema_dependents(
    tx: &Transaction<'_>,
    defs: &[TableDef],
) -> Result<(), ClusterError> {
    let relids: Vec<u32> = defs.iter().map(|d| d.relid).collect();
    let outside = tx
        .query(
            "SELECT conname::text, conrelid::regclass::text, confrelid::regclass::text
             FROM pg_catalog.pg_constraint
             WHERE contype = 'f' AND confrelid = ANY ($1) AND NOT conrelid = ANY ($1)",
            &[&relids],
        )
        .await?;
    if let Some(row) = outside.first() {
        return Err(ClusterError::Unsupported(format!(
            "{} is referenced by foreign key {} of {}, outside the schema; drop that constraint first",
            row.get::<_, &str>(2),
            quote_ident(row.get::<_, &str>(0)),
            row.get::<_, &str>(1)
        )));
    }
    let views = tx
        .query(
            "SELECT DISTINCT v.oid::regclass::text FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
             JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
             WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid = ANY ($1)
               AND NOT v.oid = ANY ($1)",
            &[&relids],
        )
        .await?;
    if !views.is_empty() {
        let names: Vec<String> = views.iter().map(|r| r.get(0)).collect();
        return Err(ClusterError::Unsupported(format!(
            "view(s) {} use tables of the schema; drop them first and create them again afterwards",
            names.join(", ")
        )));
    }
    Ok(())
}

/// The column a schema table's coordinator relation is partitioned by. Every row goes to its one
/// foreign partition whatever the key, so any hashable column will do: the primary key's first
/// column if it is, else the first hashable column.
async fn partition_key(tx: &Transaction<'_>, def: &TableDef) -> Result<String, ClusterError> {
    let primary = def
        .constraints
        .iter()
        .find(|c| c.kind == ConstraintKind::PrimaryKey)
        .and_then(|c| c.columns.first().cloned());
    let candidates = primary
        .iter()
        .cloned()
        .chain(def.columns.iter().map(|c| c.name.clone()));
    for name in candidates {
        let Some(column) = def.column(&name) else {
            continue;
        };
        if check_hashable(tx, &name, &column.type_sql).await.is_ok() {
            return Ok(name);
        }
    }
    Err(ClusterError::Unsupported(format!(
        "{} has no column of a hashable type, which Shoal needs to route its rows; add one",
        def.name
    )))
}

/// Replaces each table by a partitioned table whose one partition is a foreign table on `node`,
/// holding the same rows (see `layout` for why the middle level exists).
async fn switch_to_foreign_tables(
    tx: &Transaction<'_>,
    defs: &[TableDef],
    shards: &[(i64, QualifiedName)],
    node: &Node,
) -> Result<u64, ClusterError> {
    let mut rows = 0;
    let mut replacements = Vec::new();
    for (def, (_, shard)) in defs.iter().zip(shards) {
        let key = partition_key(tx, def).await?;
        let parent = QualifiedName::new(&def.name.schema, format!("__shoal_new_{}", def.relid));
        tx.batch_execute(&format!(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
             INCLUDING COMMENTS) PARTITION BY HASH ({});\n{}",
            parent.quoted(),
            def.name.quoted(),
            quote_ident(&key),
            layout::placement_ddl(&parent, shard, &node.fdw_server)
        ))
        .await
        .context(|| format!("creating the distributed form of {}", def.name))?;
        rows += copy_rows(tx, &def.name, &parent).await?;
        move_owned_sequences(tx, def.relid, &parent).await?;
        replacements.push(parent);
    }
    if defs.is_empty() {
        return Ok(0);
    }
    // One DROP for all: foreign keys among them do not block it.
    let names: Vec<String> = defs.iter().map(|d| d.name.quoted()).collect();
    tx.batch_execute(&format!("DROP TABLE {}", names.join(", ")))
        .await?;
    for (def, parent) in defs.iter().zip(&replacements) {
        tx.batch_execute(&format!(
            "ALTER TABLE {} RENAME TO {}",
            parent.quoted(),
            quote_ident(&def.name.name)
        ))
        .await?;
        for statement in layout::coordinator_index_ddl(def, &def.name) {
            tx.batch_execute(&statement)
                .await
                .context(|| format!("creating {statement} on the coordinator"))?;
        }
    }
    Ok(rows)
}
