//! Hash-distributed tables: `table distribute` and `table undistribute`.
//!
//! On the coordinator a distributed table is a table `PARTITION BY HASH (column)` whose
//! partitions are postgres_fdw foreign tables, one per shard, each pointing at the shard table
//! on the node that holds it. PostgreSQL then does the routing: partition pruning sends key
//! lookups to one node, and inserts are routed by the partition bounds.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::Transaction;

use crate::checks::{
    check_hashable, check_no_dependents, check_supported_columns, check_unique_constraints,
    lock_table,
};
use crate::cleanup::begin_operation;
use crate::error::{ClusterError, PgContext};
use crate::layout;
use crate::locks;
use crate::placement::{place_in_group, place_new_group};
use crate::resolve::{resolve_column_name, resolve_relation, resolve_relation_by_oid, Relation};
use crate::statistics;
use crate::switch::{copy_rows, replace_table, settle};
use crate::Cluster;
use shoal_catalog::model::{self, CleanupObject, CleanupPolicy, ColocationGroup, Node, TableKind};
use shoal_ddl::definition::{foreign_key_ddl, introspect, shard_table_ddl, TableDef};
use shoal_sql::{derived_name, quote_ident, QualifiedName};

pub const DEFAULT_SHARD_COUNT: i32 = 32;
pub const MAX_SHARD_COUNT: i32 = 4096;

/// Which colocation group a newly distributed table joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Colocate {
    /// The default group for its shard count and column type (created if needed).
    Default,
    /// The group of this (already distributed) table.
    With(String),
    /// A new group of its own.
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistributeReport {
    pub table: QualifiedName,
    pub distribution_column: String,
    pub shard_count: i32,
    pub colocation_id: i32,
    pub rows_moved: u64,
    /// Shard id and node id of each shard index.
    pub shards: Vec<(i64, i32)>,
}

/// A planned shard: everything needed to create it, decided before anything is created.
#[derive(Debug, Clone)]
pub(crate) struct PlannedShard {
    pub index: i32,
    pub shard_id: i64,
    pub table: QualifiedName,
    pub node_id: i32,
}

/// Where each foreign key of a shard points, per shard index.
pub(crate) enum FkTarget {
    /// A reference table: the same name on every node.
    Reference(QualifiedName),
    /// A colocated table (or the table itself): the shard of the same index.
    Colocated(Vec<QualifiedName>),
}

pub async fn distribute_table(
    cluster: &Cluster,
    table: &str,
    column: &str,
    shard_count: Option<i32>,
    colocate: Colocate,
) -> Result<DistributeReport, ClusterError> {
    let mut reports = distribute_tables(
        cluster,
        &DistributeRequest {
            table,
            column,
            shard_count,
            colocate,
            with_referencing: false,
        },
    )
    .await?;
    Ok(reports.remove(0))
}

#[derive(Debug, Clone)]
pub struct DistributeRequest<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub shard_count: Option<i32>,
    pub colocate: Colocate,
    /// Also distribute, colocated and in the same operation, the plain tables whose foreign
    /// keys reference this one through the distribution column (each by its referencing
    /// column), so that the keys stay enforced on the shards.
    pub with_referencing: bool,
}

/// One table of a distribution, planned before anything is created.
struct PlannedTable {
    def: TableDef,
    column: String,
    shards: Vec<PlannedShard>,
    fk_targets: Vec<FkTarget>,
}

/// Distributes a table (and, with `with_referencing`, the tables that reference it) in one
/// operation: shards built first, then one coordinator transaction swaps every table in.
/// Reports the requested table first.
pub async fn distribute_tables(
    cluster: &Cluster,
    request: &DistributeRequest<'_>,
) -> Result<Vec<DistributeReport>, ClusterError> {
    if let Some(count) = request.shard_count {
        if !(1..=MAX_SHARD_COUNT).contains(&count) {
            return Err(ClusterError::ShardCountOutOfRange(count.into()));
        }
    }
    let label = format!("shoal table distribute {}", request.table);
    let mut coordinator = cluster.coordinator(&label).await?;
    let tx = coordinator.transaction().await?;
    let relation = resolve_relation(&tx, request.table).await?;
    let (def, column) = prepare_table(&tx, &relation, request.column).await?;
    let referencing = if request.with_referencing {
        referencing_tables(&tx, &def, &column).await?
    } else {
        Vec::new()
    };
    let referencing_relids: Vec<u32> = referencing.iter().map(|(d, _)| d.relid).collect();
    check_no_dependents(&tx, &def, &referencing_relids).await?;
    let type_sql = def
        .column(&column)
        .map(|c| c.type_sql.clone())
        .unwrap_or_default();
    for (other, other_column) in &referencing {
        check_no_dependents(&tx, other, &[]).await?;
        let other_type = other
            .column(other_column)
            .map(|c| c.type_sql.as_str())
            .unwrap_or_default();
        if other_type != type_sql {
            return Err(ClusterError::Unsupported(format!(
                "{} references {} through column {} of type {other_type}, but {} has type \
                 {type_sql}; colocated tables need one type",
                other.name,
                def.name,
                quote_ident(other_column),
                quote_ident(&column)
            )));
        }
    }

    let (group, shard_count, group_is_new) =
        choose_group(&tx, &request.colocate, request.shard_count, &type_sql).await?;
    if let Some(group) = &group {
        locks::refuse_during_transfer(&tx, group.colocation_id).await?;
    }
    let nodes = model::list_nodes(&tx).await?;
    let placement = plan_placement(&tx, &group, shard_count, &nodes).await?;
    let mut planned: Vec<PlannedTable> = Vec::new();
    for (table_def, table_column) in std::iter::once((def, column)).chain(referencing) {
        let mut shards = Vec::with_capacity(placement.len());
        for (index, node_id) in placement.iter().enumerate() {
            let shard_id = model::next_shard_id(cluster.client()).await?;
            shards.push(PlannedShard {
                index: index as i32,
                shard_id,
                table: QualifiedName::new(
                    &table_def.name.schema,
                    derived_name(&table_def.name.name, &shard_id.to_string()),
                ),
                node_id: *node_id,
            });
        }
        // Keys may point at a table distributed by this same operation (the first one, or
        // the table itself): at its planned shards.
        let in_operation: Vec<(u32, String, Vec<QualifiedName>)> = planned
            .iter()
            .map(|p| (p.def.relid, p.column.clone(), shard_names(&p.shards)))
            .chain(std::iter::once((
                table_def.relid,
                table_column.clone(),
                shard_names(&shards),
            )))
            .collect();
        let fk_targets =
            foreign_key_targets(&tx, &table_def, &table_column, &group, &in_operation).await?;
        planned.push(PlannedTable {
            def: table_def,
            column: table_column,
            shards,
            fk_targets,
        });
    }

    let operation_id = begin_operation(cluster).await?;
    let result = async {
        // The referenced table's shards first: the others' keys point at them.
        for table in &planned {
            create_shards(
                cluster,
                &nodes,
                &table.def,
                &table.shards,
                &table.fk_targets,
                operation_id,
                &label,
            )
            .await?;
        }
        let mut new_relids = Vec::new();
        let mut rows = Vec::new();
        for table in &planned {
            new_relids.push(
                swap_in_partitioned(
                    &tx,
                    &table.def,
                    &table.column,
                    shard_count,
                    &table.shards,
                    &nodes,
                )
                .await?,
            );
            rows.push(copy_rows(&tx, &table.def.name, &new_parent_name(&table.def)).await?);
        }
        // Referencing tables go first: their keys to the others go with them.
        for table in planned.iter().rev() {
            replace_table(&tx, &table.def, &new_parent_name(&table.def)).await?;
        }
        for table in &planned {
            for statement in layout::coordinator_index_ddl(&table.def, &table.def.name) {
                tx.batch_execute(&statement)
                    .await
                    .context(|| format!("creating {statement} on the coordinator"))?;
            }
        }
        let group = if group_is_new {
            model::insert_group(
                &tx,
                TableKind::Hash,
                shard_count,
                Some(&type_sql),
                request.colocate == Colocate::Default,
                None,
            )
            .await?
        } else {
            group.clone().expect("an existing group")
        };
        for (table, relid) in planned.iter().zip(&new_relids) {
            let table_id = model::insert_table(
                &tx,
                *relid,
                TableKind::Hash,
                Some(&table.column),
                group.colocation_id,
                &serde_json::to_value(table.def.numbered_as_copy())
                    .expect("table definitions serialise"),
            )
            .await?;
            for shard in &table.shards {
                model::insert_shard(&tx, shard.shard_id, table_id, shard.index, &shard.table)
                    .await?;
                model::insert_placement(&tx, shard.shard_id, shard.node_id).await?;
            }
        }
        // Success and the forgetting of the on-failure records commit together.
        model::delete_cleanup_records(&tx, operation_id, CleanupPolicy::OnFailure).await?;
        Ok::<_, ClusterError>((rows, group.colocation_id))
    }
    .await;
    let names: Vec<String> = planned.iter().map(|t| t.def.name.to_string()).collect();
    let (rows, colocation_id) = settle(
        cluster,
        operation_id,
        tx,
        result,
        &format!("distributing {}", names.join(", ")),
    )
    .await?;
    let names = planned.iter().map(|t| t.def.name.clone()).collect();
    statistics::refresh::refresh_after_distributing(cluster, names).await;
    Ok(planned
        .iter()
        .zip(rows)
        .map(|(table, rows_moved)| DistributeReport {
            table: table.def.name.clone(),
            distribution_column: table.column.clone(),
            shard_count,
            colocation_id,
            rows_moved,
            shards: table
                .shards
                .iter()
                .map(|s| (s.shard_id, s.node_id))
                .collect(),
        })
        .collect())
}

fn shard_names(shards: &[PlannedShard]) -> Vec<QualifiedName> {
    shards.iter().map(|s| s.table.clone()).collect()
}

/// Checks that a table can be distributed by `column`, locks it (readers and writers wait
/// from here until the distributed table replaces it) and reads its definition.
async fn prepare_table(
    tx: &Transaction<'_>,
    relation: &Relation,
    column: &str,
) -> Result<(TableDef, String), ClusterError> {
    if let Some(existing) = model::get_table_by_relid(tx, relation.relid).await? {
        return Err(ClusterError::AlreadyDistributed {
            table: existing.name.to_string(),
            kind: existing.kind.as_str().to_string(),
        });
    }
    if relation.relkind != "r" {
        return Err(ClusterError::Unsupported(format!(
            "{} is not a plain table (relkind {}); only plain tables can be distributed",
            relation.name, relation.relkind
        )));
    }
    if model::find_group_of_kind(tx, TableKind::Schema, Some(&relation.name.schema))
        .await?
        .is_some()
    {
        return Err(ClusterError::Unsupported(format!(
            "{} belongs to distributed schema {}; add it with `shoal schema sync {}`",
            relation.name,
            quote_ident(&relation.name.schema),
            quote_ident(&relation.name.schema)
        )));
    }
    lock_table(tx, &relation.name).await?;
    let def = introspect(tx, relation.relid).await?;
    let column = resolve_column_name(tx, column).await?;
    let dist_column = def
        .column(&column)
        .ok_or_else(|| ClusterError::UnknownColumn {
            table: def.name.to_string(),
            column: quote_ident(&column),
            available: def
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let type_sql = dist_column.type_sql.clone();
    check_supported_columns(&def)?;
    check_hashable(tx, &column, &type_sql).await?;
    check_unique_constraints(&def, &column)?;
    Ok((def, column))
}

/// The plain tables whose foreign keys reference `def` through its distribution column, each
/// with the referencing column it is distributed by (checked and locked like the table).
async fn referencing_tables(
    tx: &Transaction<'_>,
    def: &TableDef,
    column: &str,
) -> Result<Vec<(TableDef, String)>, ClusterError> {
    let rows = tx
        .query(
            "SELECT DISTINCT c.conrelid, c.conname::text, a.attname::text
             FROM pg_catalog.pg_constraint c
             LEFT JOIN LATERAL unnest(c.confkey, c.conkey) AS k(referenced, referencing) ON true
             LEFT JOIN pg_catalog.pg_attribute ra
                    ON ra.attrelid = c.confrelid AND ra.attnum = k.referenced AND ra.attname = $2
             LEFT JOIN pg_catalog.pg_attribute a
                    ON a.attrelid = c.conrelid AND a.attnum = k.referencing AND ra.attname IS NOT NULL
             WHERE c.contype = 'f' AND c.confrelid = $1 AND c.conrelid <> $1
             ORDER BY 1, 3 NULLS FIRST",
            &[&def.relid, &column],
        )
        .await?;
    let mut out: Vec<(TableDef, String)> = Vec::new();
    for row in rows {
        let relid: u32 = row.get(0);
        let referencing_column: Option<String> = row.get(2);
        if out.iter().any(|(d, _)| d.relid == relid) {
            continue;
        }
        let Some(referencing_column) = referencing_column else {
            continue;
        };
        let relation = resolve_relation_by_oid(tx, relid).await?;
        let (other, other_column) =
            prepare_table(tx, &relation, &quote_ident(&referencing_column)).await?;
        out.push((other, other_column));
    }
    // A key that does not go through the distribution column cannot be enforced per shard.
    let through: Vec<u32> = out.iter().map(|(d, _)| d.relid).collect();
    let other = tx
        .query_opt(
            "SELECT c.conname::text, c.conrelid::regclass::text FROM pg_catalog.pg_constraint c
             WHERE c.contype = 'f' AND c.confrelid = $1 AND c.conrelid <> $1
               AND NOT c.conrelid = ANY ($2) LIMIT 1",
            &[&def.relid, &through],
        )
        .await?;
    if let Some(row) = other {
        return Err(ClusterError::Unsupported(format!(
            "foreign key {} of {} references {} but not through its distribution column {}; \
             drop that constraint first, or distribute by the column it references",
            quote_ident(row.get::<_, &str>(0)),
            row.get::<_, &str>(1),
            def.name,
            quote_ident(column)
        )));
    }
    Ok(out)
}

/// Returns the group to join (None when a new one is to be created), and the shard count.
async fn choose_group(
    tx: &Transaction<'_>,
    colocate: &Colocate,
    shard_count: Option<i32>,
    type_sql: &str,
) -> Result<(Option<ColocationGroup>, i32, bool), ClusterError> {
    match colocate {
        Colocate::Default => {
            let count = shard_count.unwrap_or(DEFAULT_SHARD_COUNT);
            match model::find_default_group(tx, count, type_sql).await? {
                Some(group)
                    if !model::tables_in_group(tx, group.colocation_id)
                        .await?
                        .is_empty() =>
                {
                    Ok((Some(group), count, false))
                }
                Some(group) => {
                    // An empty default group (its tables were undistributed) is replaced.
                    model::delete_group_if_empty(tx, group.colocation_id).await?;
                    Ok((None, count, true))
                }
                None => Ok((None, count, true)),
            }
        }
        Colocate::None => Ok((None, shard_count.unwrap_or(DEFAULT_SHARD_COUNT), true)),
        Colocate::With(other) => {
            let relation = resolve_relation(tx, other).await?;
            let table = model::get_table_by_relid(tx, relation.relid)
                .await?
                .ok_or_else(|| ClusterError::NotDistributed(relation.name.to_string()))?;
            let mismatch = |reason: String| ClusterError::ColocationMismatch {
                other: table.name.to_string(),
                reason,
            };
            if table.kind != TableKind::Hash {
                return Err(mismatch(format!(
                    "it is a {} table; only hash-distributed tables form colocation groups",
                    table.kind.as_str()
                )));
            }
            let group = model::get_group(tx, table.colocation_id).await?;
            if let Some(count) = shard_count {
                if count != group.shard_count {
                    return Err(mismatch(format!(
                        "it has {} shards and {count} were asked for; omit --shards or use {}",
                        group.shard_count, group.shard_count
                    )));
                }
            }
            let group_type = group.distribution_type.clone().unwrap_or_default();
            if group_type != type_sql {
                return Err(mismatch(format!(
                    "it is distributed by a column of type {group_type}, this column has type {type_sql}"
                )));
            }
            let count = group.shard_count;
            Ok((Some(group), count, false))
        }
    }
}

async fn plan_placement(
    tx: &Transaction<'_>,
    group: &Option<ColocationGroup>,
    shard_count: i32,
    nodes: &[Node],
) -> Result<Vec<i32>, ClusterError> {
    if let Some(group) = group {
        let tables = model::tables_in_group(tx, group.colocation_id).await?;
        let mut pairs = Vec::new();
        for table in &tables {
            for p in model::placements_of_table(tx, table.table_id).await? {
                pairs.push((p.shard_index, p.node_id));
            }
        }
        return place_in_group(shard_count as usize, &pairs).ok_or_else(|| {
            ClusterError::Unsupported(format!(
                "the placements of colocation group {} are inconsistent; run `shoal shard list` to inspect them",
                group.colocation_id
            ))
        });
    }
    let candidates: Vec<i32> = nodes
        .iter()
        .filter(|n| n.accepts_shards())
        .map(|n| n.node_id)
        .collect();
    if candidates.is_empty() {
        return Err(ClusterError::NoNodes);
    }
    let load: BTreeMap<i32, i64> = model::shard_counts_by_node(tx).await?.into_iter().collect();
    Ok(place_new_group(shard_count as usize, &candidates, &load))
}

/// Foreign keys of a distributed table may point at reference tables (present on every node) or
/// at a colocated table through the distribution column (the matching shard is on the same node).
/// `in_operation`: the tables this operation distributes (relid, distribution column, planned
/// shards), the table itself included: a key to one of them goes through the distribution
/// column to the planned shard of the same index.
async fn foreign_key_targets(
    tx: &Transaction<'_>,
    def: &TableDef,
    column: &str,
    group: &Option<ColocationGroup>,
    in_operation: &[(u32, String, Vec<QualifiedName>)],
) -> Result<Vec<FkTarget>, ClusterError> {
    let mut targets = Vec::new();
    for (constraint, fk) in def.foreign_keys() {
        let refused = |why: &str| {
            ClusterError::Unsupported(format!(
                "foreign key {} of {} references {}, {why}; drop the constraint or {}",
                quote_ident(&constraint.name),
                def.name,
                fk.referenced,
                "make the referenced table a reference table first (`shoal table reference`)"
            ))
        };
        if let Some((_, referenced_column, shards)) = in_operation
            .iter()
            .find(|(relid, _, _)| *relid == fk.referenced_relid)
        {
            let position = fk.columns.iter().position(|c| c == column);
            if position.map(|p| &fk.referenced_columns[p]) != Some(referenced_column) {
                return Err(refused(
                    "a table distributed with it, but not through the distribution column",
                ));
            }
            targets.push(FkTarget::Colocated(shards.clone()));
            continue;
        }
        let Some(target) = model::get_table_by_relid(tx, fk.referenced_relid).await? else {
            return Err(refused(
                "a table that is not distributed (to distribute both, distribute the referenced \
                 table with --with-referencing)",
            ));
        };
        match target.kind {
            TableKind::Reference => targets.push(FkTarget::Reference(target.name.clone())),
            TableKind::Hash => {
                let same_group = group
                    .as_ref()
                    .is_some_and(|g| g.colocation_id == target.colocation_id);
                let through_key = fk
                    .columns
                    .iter()
                    .position(|c| c == column)
                    .is_some_and(|p| {
                        target.distribution_column.as_deref()
                            == Some(fk.referenced_columns[p].as_str())
                    });
                if !same_group || !through_key {
                    return Err(refused(
                        "a distributed table that is not colocated with it through the distribution column (use --colocate-with)",
                    ));
                }
                let shards = model::placements_of_table(tx, target.table_id).await?;
                let mut names: Vec<(i32, QualifiedName)> = shards
                    .into_iter()
                    .map(|p| (p.shard_index, p.shard_table))
                    .collect();
                names.sort();
                names.dedup();
                targets.push(FkTarget::Colocated(
                    names.into_iter().map(|(_, n)| n).collect(),
                ));
            }
            TableKind::Schema => return Err(refused("a table of a distributed schema")),
        }
    }
    Ok(targets)
}

/// Creates the shard tables on their nodes, node by node, each node's shards in one
/// transaction. A cleanup record is committed before each node is touched.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_shards(
    cluster: &Cluster,
    nodes: &[Node],
    def: &TableDef,
    shards: &[PlannedShard],
    fk_targets: &[FkTarget],
    operation_id: i64,
    label: &str,
) -> Result<(), ClusterError> {
    let mut by_node: BTreeMap<i32, Vec<&PlannedShard>> = BTreeMap::new();
    for shard in shards {
        by_node.entry(shard.node_id).or_default().push(shard);
    }
    let node_by_id: HashMap<i32, &Node> = nodes.iter().map(|n| (n.node_id, n)).collect();
    for (node_id, node_shards) in by_node {
        let node = node_by_id
            .get(&node_id)
            .ok_or_else(|| ClusterError::UnknownNode(node_id.to_string()))?;
        // Connect first: a record for a node never reached would only wait for cleanup.
        let client = cluster.node_client(node, label).await?;
        for shard in &node_shards {
            model::insert_cleanup_record(
                cluster.client(),
                operation_id,
                CleanupObject::ShardTable,
                Some(&shard.table.schema),
                &shard.table.name,
                node_id,
                CleanupPolicy::OnFailure,
            )
            .await?;
        }
        let mut ddl = vec!["BEGIN".to_string()];
        for shard in &node_shards {
            ddl.extend(shard_table_ddl(def, &shard.table, Some(shard.shard_id)));
        }
        for shard in &node_shards {
            for ((constraint, fk), target) in def.foreign_keys().zip(fk_targets) {
                let referenced = match target {
                    FkTarget::Reference(name) => name.clone(),
                    FkTarget::Colocated(names) => names[shard.index as usize].clone(),
                };
                ddl.push(foreign_key_ddl(
                    &shard.table,
                    constraint,
                    fk,
                    &referenced,
                    Some(shard.shard_id),
                ));
            }
        }
        ddl.push("COMMIT".to_string());
        client
            .batch_execute(&ddl.join(";\n"))
            .await
            .context(|| format!("creating shards of {} on node {}", def.name, node.address()))?;
    }
    Ok(())
}

fn new_parent_name(def: &TableDef) -> QualifiedName {
    QualifiedName::new(&def.name.schema, format!("__shoal_new_{}", def.relid))
}

/// Creates the partitioned table (not yet under the table's name) and its foreign partitions.
async fn swap_in_partitioned(
    tx: &Transaction<'_>,
    def: &TableDef,
    column: &str,
    shard_count: i32,
    shards: &[PlannedShard],
    nodes: &[Node],
) -> Result<u32, ClusterError> {
    let parent = new_parent_name(def);
    let mut ddl = vec![format!(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE \
         INCLUDING COMMENTS) PARTITION BY HASH ({})",
        parent.quoted(),
        def.name.quoted(),
        quote_ident(column)
    )];
    for shard in shards {
        let node = nodes
            .iter()
            .find(|n| n.node_id == shard.node_id)
            .expect("planned on a known node");
        ddl.extend(layout::hash_shard_ddl(
            &parent,
            column,
            shard_count,
            shard.index,
            &shard.table,
            &node.fdw_server,
        ));
    }
    tx.batch_execute(&ddl.join(";\n"))
        .await
        .context(|| format!("creating the partitioned table for {}", def.name))?;
    let relid: u32 = tx
        .query_one("SELECT to_regclass($1)::oid", &[&parent.quoted()])
        .await?
        .get(0);
    Ok(relid)
}
